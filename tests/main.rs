//! Integration tests: one binary (fast to link), one module per concern.

mod common;
mod e2e;
mod keras_h5;
mod onnx_exports;
mod parity;
mod resize;
mod spec_errors;
mod timm;
