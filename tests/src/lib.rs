//! weft-tests
