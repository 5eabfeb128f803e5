//! weft-certs
