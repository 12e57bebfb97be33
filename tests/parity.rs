//! Parity tests of the backbones (see models/).
