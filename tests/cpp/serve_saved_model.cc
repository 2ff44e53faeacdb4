// Loads an exported captioner with tensorflow::LoadSavedModel (tag "serve": the loader
// TensorFlow Serving is built on) and runs its serving_default signature on image files, by
// the signature's tensor names. Prints one JSON line: {"valid": [...], "captions": [[...]],
// "log_probs": [[...]]}.
//
//   serve_saved_model EXPORT_DIR FILE...
//
// Built by tests/test_hostile_serving.py against the installed TensorFlow wheel's headers and
// libtensorflow_cc.so.2 / libtensorflow_framework.so.2.

#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/cc/saved_model/constants.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

int Fail(const std::string& what, const tensorflow::Status& status) {
  std::cerr << what << ": " << status.ToString() << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: serve_saved_model EXPORT_DIR FILE..." << std::endl;
    return 2;
  }
  tensorflow::SavedModelBundle bundle;
  const std::unordered_set<std::string> tags = {"serve"};  // kSavedModelTagServe (tag_constants.h is not in the wheel)
  tensorflow::Status status =
      tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(), argv[1], tags, &bundle);
  if (!status.ok()) return Fail("LoadSavedModel", status);

  const auto& signatures = bundle.meta_graph_def.signature_def();
  auto found = signatures.find("serving_default");
  if (found == signatures.end()) {
    std::cerr << "no serving_default signature" << std::endl;
    return 1;
  }
  const tensorflow::SignatureDef& signature = found->second;

  const int n = argc - 2;
  tensorflow::Tensor image_bytes(tensorflow::DT_STRING, tensorflow::TensorShape({n}));
  for (int i = 0; i < n; ++i) image_bytes.flat<tensorflow::tstring>()(i) = ReadFile(argv[i + 2]);

  const std::vector<std::string> keys = {"valid", "captions", "log_probs"};
  std::vector<std::string> fetches;
  for (const auto& key : keys) fetches.push_back(signature.outputs().at(key).name());
  std::vector<tensorflow::Tensor> outputs;
  status = bundle.session->Run({{signature.inputs().at("image_bytes").name(), image_bytes}}, fetches, {},
                               &outputs);
  if (!status.ok()) return Fail("serving_default", status);

  const auto valid = outputs[0].flat<bool>();
  const auto captions = outputs[1].matrix<tensorflow::tstring>();
  const auto log_probs = outputs[2].matrix<float>();
  std::ostringstream json;
  json << "{\"valid\": [";
  for (int i = 0; i < n; ++i) json << (i ? ", " : "") << (valid(i) ? "true" : "false");
  json << "], \"captions\": [";
  for (int i = 0; i < n; ++i) {
    json << (i ? ", " : "") << "[";
    for (int k = 0; k < captions.dimension(1); ++k) {
      json << (k ? ", " : "") << JsonString(std::string(captions(i, k)));
    }
    json << "]";
  }
  json << "], \"log_probs\": [";
  for (int i = 0; i < n; ++i) {
    json << (i ? ", " : "") << "[";
    for (int k = 0; k < log_probs.dimension(1); ++k) {
      // -inf (an image that did not decode) is not JSON: written as null.
      const float v = log_probs(i, k);
      json << (k ? ", " : "");
      if (v == -std::numeric_limits<float>::infinity()) {
        json << "null";
      } else {
        json.precision(9);
        json << v;
      }
    }
    json << "]";
  }
  json << "]}";
  std::cout << json.str() << std::endl;
  return 0;
}
