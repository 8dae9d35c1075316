//! The MLS side of Lodge's DAVE role (delivery service + external sender), over openmls 0.8.
//!
//! What lives here and why it is split this way:
//! - [`ExternalSenderKey`]: the call's P-256 signing key (op 25 body, external Add/Remove
//!   proposals). openmls builds and signs the proposals.
//! - [`validate_key_package`]: op 26. A structural walk first (ours, [`walk_key_package`]), then
//!   openmls for the signatures. The walk comes first because tls_codec 0.4 (with openmls's
//!   `mls` feature) has `debug_assert!`s on reserved length prefixes and truncated vectors: in a
//!   debug build hostile bytes would panic inside the decoder. Only input whose every vector
//!   header has been checked reaches openmls, and that call is additionally isolated with
//!   `catch_unwind` (extension bodies are parsed by openmls itself).
//! - [`parse_commit_welcome`]: op 28. Lodge never gives commits to openmls — it cannot verify a
//!   member's commit (the signature covers the group context, which only members hold), it only
//!   needs the epoch, sender and proposal refs, and it forwards the bytes verbatim. So the
//!   PublicMessage is walked by hand (RFC 9420 §6), which also finds where the Welcome starts.
//! - [`proposal_ref`]: RFC 9420 §5.2 RefHash, computed here because openmls keeps its helper
//!   `pub(crate)`.
//! - [`LeafMirror`]: which user holds which leaf, replaying each accepted commit the way RFC 9420
//!   §12.3 applies it (removes, then adds into the leftmost blank leaf).

use std::panic::{catch_unwind, AssertUnwindSafe};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, ExternalProposal, ExternalSender, GroupEpoch, GroupId, KeyPackage,
    KeyPackageIn, LeafNodeIndex, OpenMlsProvider as _, ProtocolVersion, SenderExtensionIndex,
    SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::wire::Reader;
use super::{ChannelId, DaveError, UserId};

/// MLS_128_DHKEMP256_AES128GCM_SHA256_P256, the only DAVE v1 ciphersuite.
pub const CIPHERSUITE: u16 = 2;
/// Identity of the external sender's basic credential. Clients only compare it for equality
/// with the group's external_senders extension (what Discord uses is unconfirmed).
pub const EXTERNAL_SENDER_IDENTITY: &[u8] = b"lodge";
/// A ProposalRef: SHA-256 RefHash.
pub type ProposalRef = [u8; 32];

const MLS10: u16 = 1;
const WIRE_PUBLIC_MESSAGE: u16 = 1;
const WIRE_KEY_PACKAGE: u16 = 5;
const CREDENTIAL_BASIC: u16 = 1;
const CREDENTIAL_X509: u16 = 2;
const CONTENT_COMMIT: u8 = 3;
const SENDER_MEMBER: u8 = 1;
const PROPOSAL_OR_REF_PROPOSAL: u8 = 1;
const PROPOSAL_OR_REF_REF: u8 = 2;

fn mls_err(what: &'static str, e: impl std::fmt::Debug) -> DaveError {
    DaveError::Mls {
        what,
        detail: format!("{e:?}"),
    }
}

/// The call's external-sender signing key. In memory only: generated when the call starts,
/// dropped with it, never logged, serialised or persisted. It proves one thing to members — "the
/// gateway proposed this" — and cannot decrypt anything.
pub struct ExternalSenderKey {
    signer: SignatureKeyPair,
    /// op 25 body: TLS `ExternalSender { signature_key<V>, Credential }`.
    package: Vec<u8>,
}

impl std::fmt::Debug for ExternalSenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalSenderKey").finish_non_exhaustive()
    }
}

impl ExternalSenderKey {
    pub fn generate() -> Result<Self, DaveError> {
        let signer = SignatureKeyPair::new(SignatureScheme::ECDSA_SECP256R1_SHA256)
            .map_err(|e| mls_err("external sender key", e))?;
        let credential = BasicCredential::new(EXTERNAL_SENDER_IDENTITY.to_vec());
        let sender = ExternalSender::new(signer.public().into(), credential.into());
        let package = sender
            .tls_serialize_detached()
            .map_err(|e| mls_err("op 25 encode", e))?;
        Ok(Self { signer, package })
    }

    pub fn package(&self) -> &[u8] {
        &self.package
    }

    /// An external Add proposal (MLSMessage bytes) and its ref.
    pub fn propose_add(
        &self,
        key_package: &KeyPackage,
        channel: ChannelId,
        epoch: u64,
    ) -> Result<(Vec<u8>, ProposalRef), DaveError> {
        let msg = ExternalProposal::new_add::<OpenMlsRustCrypto>(
            key_package.clone(),
            group_id(channel),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .map_err(|e| mls_err("external add", e))?;
        let bytes = msg
            .to_bytes()
            .map_err(|e| mls_err("external add encode", e))?;
        let r = proposal_ref(&bytes)?;
        Ok((bytes, r))
    }

    /// An external Remove proposal for `leaf` and its ref.
    pub fn propose_remove(
        &self,
        leaf: u32,
        channel: ChannelId,
        epoch: u64,
    ) -> Result<(Vec<u8>, ProposalRef), DaveError> {
        let msg = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
            LeafNodeIndex::new(leaf),
            group_id(channel),
            GroupEpoch::from(epoch),
            &self.signer,
            SenderExtensionIndex::new(0),
        )
        .map_err(|e| mls_err("external remove", e))?;
        let bytes = msg
            .to_bytes()
            .map_err(|e| mls_err("external remove encode", e))?;
        let r = proposal_ref(&bytes)?;
        Ok((bytes, r))
    }
}

/// DAVE's MLS group id: the voice channel id, 8 bytes big-endian.
pub fn group_id(channel: ChannelId) -> GroupId {
    GroupId::from_slice(&channel.0.to_be_bytes())
}

/// RFC 9420 §5.2: `RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent)`. For a
/// PublicMessage from an external sender (no membership tag) the AuthenticatedContent is the
/// MLSMessage without its 2-byte version: `wire_format ‖ FramedContent ‖ FramedContentAuthData`.
pub fn proposal_ref(mls_message: &[u8]) -> Result<ProposalRef, DaveError> {
    const LABEL: &[u8] = b"MLS 1.0 Proposal Reference";
    let content = mls_message
        .get(2..)
        .ok_or(DaveError::Truncated { what: "proposal" })?;
    let mut input = Vec::with_capacity(content.len() + LABEL.len() + 8);
    super::wire::write_vector(&mut input, LABEL, "ref label")?;
    super::wire::write_vector(&mut input, content, "ref value")?;
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Structural walks (RFC 9420 §§6, 7.2, 10, 12.4.3.1)

/// What the walk of a LeafNode learned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeafFacts<'a> {
    credential_type: u16,
    identity: &'a [u8],
    /// `Some((not_before, not_after))` for leaf_node_source key_package.
    lifetime: Option<(u64, u64)>,
}

fn walk_u16_list(r: &mut Reader<'_>, what: &'static str) -> Result<(), DaveError> {
    let v = r.vector(what)?;
    if v.len() % 2 != 0 {
        return Err(DaveError::Unexpected {
            what,
            value: v.len() as u64,
        });
    }
    Ok(())
}

fn walk_extensions(r: &mut Reader<'_>, what: &'static str) -> Result<(), DaveError> {
    let mut ext = Reader::new(r.vector(what)?);
    while !ext.is_empty() {
        ext.u16("extension type")?;
        ext.vector("extension data")?;
    }
    Ok(())
}

fn walk_leaf_node<'a>(r: &mut Reader<'a>) -> Result<LeafFacts<'a>, DaveError> {
    r.vector("leaf encryption_key")?;
    r.vector("leaf signature_key")?;
    let credential_type = r.u16("credential type")?;
    let identity = match credential_type {
        CREDENTIAL_BASIC => r.vector("credential identity")?,
        CREDENTIAL_X509 => {
            let mut certs = Reader::new(r.vector("x509 certificates")?);
            while !certs.is_empty() {
                certs.vector("x509 certificate")?;
            }
            &[]
        }
        v => {
            return Err(DaveError::Unexpected {
                what: "credential type",
                value: v.into(),
            })
        }
    };
    walk_u16_list(r, "capabilities versions")?;
    walk_u16_list(r, "capabilities ciphersuites")?;
    walk_u16_list(r, "capabilities extensions")?;
    walk_u16_list(r, "capabilities proposals")?;
    walk_u16_list(r, "capabilities credentials")?;
    let lifetime = match r.u8("leaf_node_source")? {
        1 => Some((r.u64("lifetime not_before")?, r.u64("lifetime not_after")?)),
        2 => None,
        3 => {
            r.vector("leaf parent_hash")?;
            None
        }
        v => {
            return Err(DaveError::Unexpected {
                what: "leaf_node_source",
                value: v.into(),
            })
        }
    };
    walk_extensions(r, "leaf extensions")?;
    r.vector("leaf signature")?;
    Ok(LeafFacts {
        credential_type,
        identity,
        lifetime,
    })
}

/// Checks every header of a bare KeyPackage and the DAVE rules that need no crypto.
fn walk_key_package(bytes: &[u8], user: UserId) -> Result<(), DaveError> {
    let mut r = Reader::new(bytes);
    if r.u16("key package version")? != MLS10 {
        return Err(DaveError::KeyPackage("protocol version is not MLS 1.0"));
    }
    if r.u16("key package ciphersuite")? != CIPHERSUITE {
        return Err(DaveError::KeyPackage("ciphersuite is not 2 (P-256)"));
    }
    r.vector("key package init_key")?;
    let leaf = walk_leaf_node(&mut r)?;
    walk_extensions(&mut r, "key package extensions")?;
    r.vector("key package signature")?;
    r.finish("key package")?;
    if leaf.credential_type != CREDENTIAL_BASIC {
        return Err(DaveError::KeyPackage("credential is not basic"));
    }
    if leaf.identity != user.0.to_be_bytes() {
        return Err(DaveError::KeyPackage(
            "credential identity is not the user id (8 bytes BE)",
        ));
    }
    if leaf.lifetime != Some((0, u64::MAX)) {
        return Err(DaveError::KeyPackage("lifetime is not 0..2^64-1"));
    }
    Ok(())
}

/// Validates an op 26 key package for `user`: structure, ciphersuite 2, basic credential with
/// identity = user id (8 bytes BE), lifetime exactly 0..u64::MAX, then both signatures and the
/// other RFC checks through `KeyPackageIn::validate`. Accepts a bare KeyPackage (what davey and
/// libdave send) or one wrapped in an MLSMessage (what the whitepaper describes).
pub fn validate_key_package(bytes: &[u8], user: UserId) -> Result<KeyPackage, DaveError> {
    let wrapped = [0, MLS10 as u8, 0, WIRE_KEY_PACKAGE as u8];
    let bare = match bytes.get(..4) {
        Some(head) if head == wrapped => &bytes[4..],
        _ => bytes,
    };
    walk_key_package(bare, user)?;
    let parsed = catch_unwind(AssertUnwindSafe(|| {
        KeyPackageIn::tls_deserialize_exact(bare)
    }))
    .map_err(|_| DaveError::KeyPackage("decoder panicked"))?
    .map_err(|e| mls_err("key package decode", e))?;
    let provider = OpenMlsRustCrypto::default();
    let kp = catch_unwind(AssertUnwindSafe(|| {
        parsed.validate(provider.crypto(), ProtocolVersion::Mls10)
    }))
    .map_err(|_| DaveError::KeyPackage("validation panicked"))?
    .map_err(|e| mls_err("key package validation", e))?;
    if u16::from(kp.ciphersuite()) != CIPHERSUITE {
        return Err(DaveError::KeyPackage("ciphersuite is not 2 (P-256)"));
    }
    Ok(kp)
}

/// What Lodge learns from an op 28 commit (RFC 9420 §6.2 PublicMessage, §12.4 Commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo<'a> {
    pub epoch: u64,
    /// The committer's leaf (sender type member).
    pub sender_leaf: u32,
    /// The proposals it covers, in commit order.
    pub refs: Vec<ProposalRef>,
    /// The MLSMessage bytes, forwarded verbatim in op 29.
    pub commit: &'a [u8],
    /// The Welcome that followed, if any (structurally checked), forwarded in op 30.
    pub welcome: Option<&'a [u8]>,
}

/// Splits and inspects an op 28 payload `MLSMessage(commit) ‖ Welcome?`. Refuses anything but
/// a PublicMessage commit from a member of `channel`'s group whose proposals are all by
/// reference.
pub fn parse_commit_welcome(
    payload: &[u8],
    channel: ChannelId,
) -> Result<CommitInfo<'_>, DaveError> {
    let mut r = Reader::new(payload);
    if r.u16("commit version")? != MLS10 {
        return Err(DaveError::CommitShape("not MLS 1.0"));
    }
    if r.u16("commit wire_format")? != WIRE_PUBLIC_MESSAGE {
        return Err(DaveError::CommitShape("not a PublicMessage"));
    }
    if r.vector("commit group_id")? != channel.0.to_be_bytes() {
        return Err(DaveError::CommitShape("group id is not this channel"));
    }
    let epoch = r.u64("commit epoch")?;
    if r.u8("commit sender type")? != SENDER_MEMBER {
        return Err(DaveError::CommitShape("sender is not a member"));
    }
    let sender_leaf = r.u32("commit sender leaf")?;
    r.vector("commit authenticated_data")?;
    if r.u8("commit content_type")? != CONTENT_COMMIT {
        return Err(DaveError::CommitShape("content type is not commit"));
    }
    let mut props = Reader::new(r.vector("commit proposals")?);
    let mut refs = Vec::new();
    while !props.is_empty() {
        match props.u8("proposal_or_ref type")? {
            PROPOSAL_OR_REF_REF => {
                let v = props.vector("proposal ref")?;
                let arr: ProposalRef = v.try_into().map_err(|_| DaveError::Unexpected {
                    what: "proposal ref length",
                    value: v.len() as u64,
                })?;
                refs.push(arr);
            }
            PROPOSAL_OR_REF_PROPOSAL => return Err(DaveError::CommitShape("inline proposal")),
            v => {
                return Err(DaveError::Unexpected {
                    what: "proposal_or_ref type",
                    value: v.into(),
                })
            }
        }
    }
    match r.u8("commit path presence")? {
        0 => {}
        1 => {
            walk_leaf_node(&mut r)?;
            r.vector("update path nodes")?;
        }
        v => {
            return Err(DaveError::Unexpected {
                what: "commit path presence",
                value: v.into(),
            })
        }
    }
    r.vector("commit signature")?;
    r.vector("commit confirmation_tag")?;
    r.vector("commit membership_tag")?;
    let rest = r.remaining();
    let commit = &payload[..payload.len() - rest.len()];
    let welcome = if rest.is_empty() {
        None
    } else {
        let mut w = Reader::new(rest);
        if w.u16("welcome ciphersuite")? != CIPHERSUITE {
            return Err(DaveError::CommitShape("welcome ciphersuite is not 2"));
        }
        let mut secrets = Reader::new(w.vector("welcome secrets")?);
        if secrets.is_empty() {
            return Err(DaveError::CommitShape("welcome has no secrets"));
        }
        while !secrets.is_empty() {
            secrets.vector("welcome new_member")?;
            secrets.vector("welcome kem_output")?;
            secrets.vector("welcome ciphertext")?;
        }
        w.vector("welcome encrypted_group_info")?;
        w.finish("welcome")?;
        Some(rest)
    };
    Ok(CommitInfo {
        epoch,
        sender_leaf,
        refs,
        commit,
        welcome,
    })
}

// ---------------------------------------------------------------------------------------------
// Leaf mirror

/// Who holds which leaf in the established group. Invariant: `leaves[i] == Some(u)` iff the
/// members' ratchet tree has `u`'s credential at leaf `i` (after the last accepted commit); no
/// trailing `None` (the tree is truncated, RFC 9420 §7.7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafMirror {
    leaves: Vec<Option<UserId>>,
}

impl LeafMirror {
    /// A group created by `creator` (leaf 0), as a pending group is before its first commit.
    pub fn new_group(creator: UserId) -> Self {
        Self {
            leaves: vec![Some(creator)],
        }
    }

    pub fn leaf_of(&self, user: UserId) -> Option<u32> {
        self.leaves
            .iter()
            .position(|l| *l == Some(user))
            .and_then(|i| u32::try_from(i).ok())
    }

    pub fn user_at(&self, leaf: u32) -> Option<UserId> {
        self.leaves.get(leaf as usize).copied().flatten()
    }

    pub fn members(&self) -> impl Iterator<Item = (u32, UserId)> + '_ {
        self.leaves
            .iter()
            .enumerate()
            .filter_map(|(i, u)| Some((i as u32, (*u)?)))
    }

    pub fn len(&self) -> usize {
        self.leaves.iter().filter(|l| l.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a commit: every remove first, then each add into the leftmost blank leaf (else
    /// appended). Returns the leaf each added user got, in order.
    pub fn apply(&mut self, removes: &[u32], adds: &[UserId]) -> Vec<(UserId, u32)> {
        for &leaf in removes {
            if let Some(slot) = self.leaves.get_mut(leaf as usize) {
                *slot = None;
            }
        }
        let mut placed = Vec::with_capacity(adds.len());
        for &user in adds {
            let i = match self.leaves.iter().position(Option::is_none) {
                Some(i) => {
                    self.leaves[i] = Some(user);
                    i
                }
                None => {
                    self.leaves.push(Some(user));
                    self.leaves.len() - 1
                }
            };
            placed.push((user, i as u32));
        }
        while self.leaves.last() == Some(&None) {
            self.leaves.pop();
        }
        placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_mirror_removes_before_adds_leftmost_blank() {
        let (a, b, c, d, e) = (UserId(1), UserId(2), UserId(3), UserId(4), UserId(5));
        let mut m = LeafMirror::new_group(a);
        assert_eq!(m.apply(&[], &[b, c, d]), vec![(b, 1), (c, 2), (d, 3)]);
        // Remove 1 and 3 then add e: e takes leaf 1 (leftmost blank), leaf 3 truncated.
        assert_eq!(m.apply(&[1, 3], &[e]), vec![(e, 1)]);
        assert_eq!(
            m.members().collect::<Vec<_>>(),
            vec![(0, a), (1, e), (2, c)]
        );
        // Remove then re-add in one commit lands in the freed leaf.
        assert_eq!(m.apply(&[0], &[a]), vec![(a, 0)]);
        assert_eq!(m.apply(&[2], &[]), vec![]);
        assert_eq!(m.leaves.len(), 2);
        assert_eq!(m.leaf_of(e), Some(1));
    }

    #[test]
    fn external_sender_package_shape() {
        let k = ExternalSenderKey::generate().unwrap();
        let p = k.package();
        // signature_key<V>: 65 > 63, so the 2-byte prefix `40 41`, then the uncompressed point
        // (0x04 …); then the basic credential (type 0x0001, identity<V>).
        assert_eq!(&p[..3], &[0x40, 0x41, 0x04]);
        assert_eq!(&p[67..69], &[0, 1]);
        assert_eq!(p[69] as usize, EXTERNAL_SENDER_IDENTITY.len());
        assert_eq!(&p[70..], EXTERNAL_SENDER_IDENTITY);
    }

    #[test]
    fn commit_parser_refuses_shapes() {
        let ch = ChannelId(0x0102_0304_0506_0708);
        let mut c = vec![0, 1, 0, 1, 8];
        c.extend_from_slice(&ch.0.to_be_bytes());
        c.extend_from_slice(&5u64.to_be_bytes());
        c.extend_from_slice(&[1, 0, 0, 0, 2, 0, 3]); // member leaf 2, no aad, commit
        let mut ok = c.clone();
        ok.extend_from_slice(&[34, 2, 32]);
        ok.extend_from_slice(&[9; 32]);
        ok.extend_from_slice(&[0, 1, 0xaa, 1, 0xbb, 1, 0xcc]); // no path, sig, tag, membership
        let info = parse_commit_welcome(&ok, ch).unwrap();
        assert_eq!(
            (info.epoch, info.sender_leaf, info.refs.clone()),
            (5, 2, vec![[9; 32]])
        );
        assert_eq!(info.welcome, None);
        // inline proposal
        let mut inline = c.clone();
        inline.extend_from_slice(&[3, 1, 0, 1]);
        assert_eq!(
            parse_commit_welcome(&inline, ch),
            Err(DaveError::CommitShape("inline proposal"))
        );
        // other channel
        assert_eq!(
            parse_commit_welcome(&ok, ChannelId(9)),
            Err(DaveError::CommitShape("group id is not this channel"))
        );
        // every truncation is an error, never a panic
        for n in 0..ok.len() {
            assert!(parse_commit_welcome(&ok[..n], ch).is_err(), "prefix {n}");
        }
        // trailing bytes must be a well-formed Welcome
        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(parse_commit_welcome(&trailing, ch).is_err());
    }

    /// Why the structural walk runs before openmls sees a key package: in a debug build
    /// tls_codec (openmls's `mls` feature) panics on a reserved `0b11` length prefix.
    #[test]
    #[cfg(debug_assertions)]
    fn tls_codec_debug_asserts_on_reserved_prefix_so_we_walk_first() {
        let hostile = [0, 1, 0, 2, 0xc0, 0, 0, 0];
        let raw = std::panic::catch_unwind(|| KeyPackageIn::tls_deserialize_exact(&hostile[..]));
        assert!(
            raw.is_err(),
            "tls_codec no longer panics here; the walk is still worth keeping"
        );
        assert_eq!(
            validate_key_package(&hostile, UserId(1)),
            Err(DaveError::VarintReserved {
                what: "key package init_key"
            })
        );
    }
}
