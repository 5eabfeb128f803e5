//! weft-control-plane
