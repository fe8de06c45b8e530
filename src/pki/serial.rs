//! Certificate serial numbers: random generation and the hex forms kept in the
//! index and accepted from operators.

use rcgen::SerialNumber;

/// Serial length in bytes: 128 random bits (CA/B forum asks for at least 64).
const SERIAL_LEN: usize = 16;

/// A random positive serial of exactly [`SERIAL_LEN`] bytes, and its hex form.
///
/// The first byte is in 0x01..=0x7f, so the DER INTEGER needs no leading zero
/// and the hex form is always 32 characters.
pub(super) fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; SERIAL_LEN] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), encode_hex(&bytes))
}

/// Lower-case hex, two characters per byte, no separators.
pub(super) fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The bytes of an even-length hex string without separators, or `None`.
pub(super) fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Canonical comparison form of a serial: lower-case hex, no colons, no leading zeros.
pub(super) fn normalize_serial(serial: &str) -> Option<String> {
    let hex: String = serial
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}
