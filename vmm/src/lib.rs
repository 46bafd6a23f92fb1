//! The ferry VMM library.
