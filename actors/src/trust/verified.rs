//! Certificate chains the webpki verifiers already accepted, remembered per
//! verifier so a peer that reconnects does not pay for the same signature
//! checks again: the chain's signature and the CRL's signature were two of
//! the three ECDSA verifications of a mesh handshake (a third of its CPU).
//!
//! What is remembered is only "these exact chain bytes (and server name)
//! passed the chain, validity and revocation checks of this verifier". That
//! verdict depends on nothing but the bytes, the verifier's anchors and CRLs
//! (fixed for its life: a reload builds a new verifier, with an empty
//! cache) and the time, so an entry lasts until the first of: the leaf's
//! notAfter, the earliest nextUpdate of the CRLs (when an expired CRL is
//! refused), and [`VERIFIED_CHAIN_TTL`]. The handshake's own signature (the
//! proof that the peer holds the key) is verified on every handshake, and
//! the checks after webpki (EKUs, topology) run every time too. Refusals are
//! never remembered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};

/// Most chains remembered per verifier. A mesh has a few dozen members, so
/// this only matters for the client port (client certificates); when full,
/// the cache starts over rather than growing.
pub const MAX_VERIFIED_CHAINS: usize = 1024;
/// The longest an accepted chain is remembered.
pub const VERIFIED_CHAIN_TTL: Duration = Duration::from_secs(300);

/// A digest of what a verdict is about.
pub(crate) type ChainKey = [u8; 32];

/// The remembered chains of one verifier.
#[derive(Debug)]
pub(crate) struct VerifiedChains {
    /// Unix seconds from which no entry is valid: the earliest CRL
    /// nextUpdate when expired CRLs are refused, else never.
    cap: u64,
    /// Key → (Unix seconds when accepted, until which the verdict holds).
    entries: Mutex<HashMap<ChainKey, (u64, u64)>>,
}

impl VerifiedChains {
    /// An empty cache whose entries all end before `cap` (Unix seconds: the
    /// earliest CRL nextUpdate when expired CRLs are refused, else `u64::MAX`).
    pub(crate) fn new(cap: u64) -> VerifiedChains {
        VerifiedChains {
            cap,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a chain (and, for server certificates, the name asked for).
    pub(crate) fn key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], name: &str) -> ChainKey {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        // Length-prefixed, so no two different chains hash the same input.
        for part in std::iter::once(name.as_bytes())
            .chain(std::iter::once(end_entity.as_ref()))
            .chain(intermediates.iter().map(|c| c.as_ref()))
        {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// Whether `key` was accepted and its verdict still holds at `now`
    /// (a clock stepped back before the acceptance does not count: the
    /// certificates may not be valid yet then).
    pub(crate) fn holds(&self, key: &ChainKey, now: UnixTime) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = now.as_secs();
        entries
            .get(key)
            .is_some_and(|&(since, until)| since <= now && now < until)
    }

    /// Remember that `key` (the chain `end_entity` + `intermediates`) was
    /// accepted at `now`: until the first notAfter of the chain (webpki
    /// checks every certificate it chains through), the CRL cap or the TTL.
    pub(crate) fn accepted(
        &self,
        key: ChainKey,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) {
        let mut not_after = u64::MAX;
        for der in std::iter::once(end_entity).chain(intermediates) {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                return;
            };
            not_after = not_after.min(cert.validity().not_after.timestamp().max(0) as u64);
        }
        let until = not_after
            .min(self.cap)
            .min(now.as_secs().saturating_add(VERIFIED_CHAIN_TTL.as_secs()));
        if until <= now.as_secs() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_VERIFIED_CHAINS {
            entries.clear();
        }
        entries.insert(key, (now.as_secs(), until));
    }

    /// Chains remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}
