//! The steps the cluster's CA record may take after the first: a
//! rotation's start (the roots held and one new root, which signs) and its
//! end (the signing root alone, the leader's only), each the next
//! generation. PEM is looked at as text only: the state machine counts and
//! compares certificates, it never parses them.

use crate::security::CaRecord;
use crate::ApplyError;

/// How many certificates a PEM bundle holds.
fn certificates(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Whether `next` may follow `known` (see `State::set_ca`).
pub(crate) fn check_step(
    known: &CaRecord,
    next: &CaRecord,
    by_leader: bool,
) -> Result<(), ApplyError> {
    if known.generation.checked_add(1) != Some(next.generation) {
        return Err(ApplyError::Refused(format!(
            "CA generation {} does not follow the cluster's ({}): a record takes the next generation",
            next.generation, known.generation
        )));
    }
    let held = certificates(&known.roots_pem);
    let starts = held == 1
        && certificates(&next.roots_pem) == 2
        && next.roots_pem.starts_with(known.roots_pem.trim_end())
        && next.roots_pem.trim_end().ends_with(next.signer_pem.trim())
        && certificates(&next.signer_pem) == 1
        && next.signer_pem != known.signer_pem;
    let ends = held > 1
        && next.roots_pem.trim() == known.signer_pem.trim()
        && next.signer_pem == known.signer_pem
        && next.chain_pem == known.chain_pem
        && next.key_sealed == known.key_sealed;
    if ends && !by_leader {
        return Err(ApplyError::Refused(
            "only the leader ends a rotation of the CA, once every node holds a certificate of the new root".to_string(),
        ));
    }
    if starts || ends {
        Ok(())
    } else if held > 1 {
        Err(ApplyError::Refused(format!(
            "a rotation of the CA is under way (generation {}): it ends by itself once every node holds a certificate of the new root",
            known.generation
        )))
    } else {
        Err(ApplyError::Refused(
            "a new CA record keeps the roots the cluster trusts and adds the one new root that signs from then on".to_string(),
        ))
    }
}
