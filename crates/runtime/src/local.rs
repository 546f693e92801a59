//! Placeholder: the local process runtime.
