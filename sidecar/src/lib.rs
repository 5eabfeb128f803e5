//! weft-sidecar
