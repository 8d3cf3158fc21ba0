//! Unit tests of the engine: scripted sequences of calls and events, no I/O.
