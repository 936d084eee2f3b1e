//! Membership by SWIM gossip (foca); see mod docs to come.
