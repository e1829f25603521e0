//! The replicated bank application.
