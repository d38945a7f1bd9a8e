//! querywatch collector library.
