#![no_std]
//! Probe logic.
