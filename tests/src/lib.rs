//! Fakes and fixtures shared by ferry's end-to-end tests.
