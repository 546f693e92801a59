//! Placeholder: the recording runtime.
