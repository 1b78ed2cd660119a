//! Record ids and handles: the record kinds, their id prefixes, how an id
//! is spelled (`c_7k2m9q4x1d3f`), how a handle is spelled (`contact/c_7k2m9q4x1d3f`),
//! and the one parser that every path segment and body field referring to a
//! record goes through, so "bare id or whole handle" is accepted the same way
//! everywhere and a reference of the wrong kind is always caught.

use std::fmt;

/// Every kind of record that has an id on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Contact,
    Company,
    Deal,
    Activity,
    Workspace,
    User,
    Token,
    Invite,
    Audit,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Contact,
        Kind::Company,
        Kind::Deal,
        Kind::Activity,
        Kind::Workspace,
        Kind::User,
        Kind::Token,
        Kind::Invite,
        Kind::Audit,
    ];

    /// The `TYPE` part of a handle.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Contact => "contact",
            Kind::Company => "company",
            Kind::Deal => "deal",
            Kind::Activity => "activity",
            Kind::Workspace => "workspace",
            Kind::User => "user",
            Kind::Token => "token",
            Kind::Invite => "invite",
            Kind::Audit => "audit",
        }
    }

    /// What an id of this kind starts with, before the `_`.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Contact => "c",
            Kind::Company => "co",
            Kind::Deal => "d",
            Kind::Activity => "a",
            Kind::Workspace => "w",
            Kind::User => "u",
            Kind::Token => "t",
            Kind::Invite => "i",
            Kind::Audit => "e",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn from_prefix(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.prefix() == s)
    }

    /// A well-formed id of this kind, for examples in messages and the manual.
    pub fn example_id(self) -> String {
        format!("{}_{EXAMPLE_BODY}", self.prefix())
    }

    /// The name with its indefinite article, for messages ("an activity").
    fn with_article(self) -> String {
        // By sound: "an activity", "an invite", but "a user".
        let article = if self.name().starts_with(['a', 'e', 'i', 'o']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {}", self.name())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Lowercase base32 without `i`, `l`, `o`, `u`, so ids survive being read aloud
/// or retyped and never spell words by accident.
pub const ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// 12 symbols of 5 bits: 60 random bits, plenty against guessing within a
/// workspace while staying short enough to type.
pub const ID_BODY_LEN: usize = 12;

const EXAMPLE_BODY: &str = "7k2m9q4x1d3f";

/// Builds an id from caller-supplied randomness (this module has no RNG so the
/// CLI can use it without one).
pub fn id_from_random(kind: Kind, random: [u8; ID_BODY_LEN]) -> String {
    let mut id = String::with_capacity(kind.prefix().len() + 1 + ID_BODY_LEN);
    id.push_str(kind.prefix());
    id.push('_');
    // 32 divides 256, so `% 32` keeps every symbol equally likely.
    id.extend(
        random
            .iter()
            .map(|b| char::from(ID_ALPHABET[usize::from(b % 32)])),
    );
    id
}

/// `TYPE/ID`.
pub fn handle(kind: Kind, id: &str) -> String {
    format!("{}/{id}", kind.name())
}

/// Why a reference to a record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefError {
    /// Well-formed enough to tell it names a record of another kind.
    WrongKind { expected: Kind, got: Kind },
    /// Not an id or handle of any kind. Carries the expected kind so the message
    /// can show what to send instead.
    Malformed { expected: Kind },
}

impl RefError {
    pub fn expected(self) -> Kind {
        match self {
            RefError::WrongKind { expected, .. } | RefError::Malformed { expected } => expected,
        }
    }
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected = self.expected();
        let example = expected.example_id();
        write!(
            f,
            "expected {} id like {example} or handle {}, ",
            expected.with_article(),
            handle(expected, &example)
        )?;
        match self {
            RefError::WrongKind { got, .. } => write!(f, "got {} handle", got.with_article()),
            RefError::Malformed { .. } => write!(
                f,
                "got something else (an id is `{}_` and {ID_BODY_LEN} characters of {})",
                expected.prefix(),
                std::str::from_utf8(ID_ALPHABET).unwrap_or_default()
            ),
        }
    }
}

impl std::error::Error for RefError {}

/// Accepts a bare id (`c_7k2m9q4x1d3f`) or a whole handle
/// (`contact/c_7k2m9q4x1d3f`) and returns the bare id.
///
/// Nothing is trimmed or case-folded: ids are compared byte for byte in the
/// database, so anything that is not exactly an id is refused rather than
/// guessed at. When the text clearly names another kind, that is reported as
/// `WrongKind` even if the rest is garbled, because "you sent a deal" is the
/// more useful correction.
pub fn parse_ref(expected: Kind, s: &str) -> Result<String, RefError> {
    let malformed = RefError::Malformed { expected };
    let id = match s.split_once('/') {
        Some((type_name, id)) => {
            let kind = Kind::from_name(type_name).ok_or(malformed)?;
            if kind != expected {
                return Err(RefError::WrongKind {
                    expected,
                    got: kind,
                });
            }
            // A handle whose id belongs to yet another kind contradicts itself.
            if id_kind(id) != Some(expected) {
                return Err(malformed);
            }
            id
        }
        None => s,
    };
    let (prefix, body) = id.split_once('_').ok_or(malformed)?;
    let kind = Kind::from_prefix(prefix).ok_or(malformed)?;
    if kind != expected {
        return Err(RefError::WrongKind {
            expected,
            got: kind,
        });
    }
    if body.len() != ID_BODY_LEN || !body.bytes().all(|b| ID_ALPHABET.contains(&b)) {
        return Err(malformed);
    }
    Ok(id.to_owned())
}

/// A URL path with every whole handle in it (`/contacts/contact/c_…`) made
/// one segment (`/contacts/contact%2Fc_…`), the form the router matches, or
/// `None` when the path has none. A handle is a segment that names a kind
/// followed by one whose prefix is a kind's (of any kind: a handle of the
/// wrong kind still reaches its route, to be refused there with a hint).
/// No route has a kind's name followed by another segment, so nothing else
/// is joined.
pub fn join_path_handles(path: &str) -> Option<String> {
    // Every request passes here: most paths name no kind, and allocate nothing.
    if !path.split('/').any(|s| Kind::from_name(s).is_some()) {
        return None;
    }
    let segments: Vec<&str> = path.split('/').collect();
    // Only after a collection (`/contacts/…`, `/members/…`): a path that
    // starts with a kind's name (`/contact/c_…`) is no route, and is shown
    // as sent.
    let joins = |i: usize| {
        i >= 2
            && !segments[i - 1].is_empty()
            && Kind::from_name(segments[i]).is_some()
            && segments.get(i + 1).and_then(|s| id_kind(s)).is_some()
    };
    if !(0..segments.len()).any(joins) {
        return None;
    }
    let mut out = String::with_capacity(path.len() + 4);
    let mut i = 0;
    while i < segments.len() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segments[i]);
        if joins(i) {
            out.push_str("%2F");
            out.push_str(segments[i + 1]);
            i += 1;
        }
        i += 1;
    }
    Some(out)
}

/// The kind an id's prefix names, without checking its body.
fn id_kind(id: &str) -> Option<Kind> {
    id.split_once('_')
        .and_then(|(prefix, _)| Kind::from_prefix(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "c_7k2m9q4x1d3f";

    #[test]
    fn whole_handles_in_a_path_become_one_segment() {
        let j = |p: &str| join_path_handles(p);
        assert_eq!(j(&format!("/contacts/{C}")), None);
        assert_eq!(j("/contacts"), None);
        assert_eq!(j("/oauth/token"), None);
        assert_eq!(j("/workspaces/w_x/tokens"), None);
        assert_eq!(
            j(&format!("/contacts/contact/{C}")).as_deref(),
            Some(format!("/contacts/contact%2F{C}").as_str())
        );
        assert_eq!(
            j(&format!("/contacts/contact/{C}/activities")).as_deref(),
            Some(format!("/contacts/contact%2F{C}/activities").as_str())
        );
        assert_eq!(
            j("/workspaces/workspace/w_1/members/user/u_2/role").as_deref(),
            Some("/workspaces/workspace%2Fw_1/members/user%2Fu_2/role")
        );
        // The wrong kind still reaches the route, which refuses it.
        assert_eq!(
            j("/contacts/deal/d_1").as_deref(),
            Some("/contacts/deal%2Fd_1")
        );
        // Not at the start of the path: /contact/c_… is no route as sent.
        assert_eq!(j(&format!("/contact/{C}")), None);
        // A kind's name before something that is not an id stays apart.
        assert_eq!(j("/contacts/contact/x"), None);
        assert_eq!(j("/contacts/contact/"), None);
    }

    #[test]
    fn names_and_prefixes_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
            assert_eq!(Kind::from_prefix(k.prefix()), Some(k));
            assert_eq!(parse_ref(k, &k.example_id()), Ok(k.example_id()));
        }
        assert_eq!(Kind::from_name("Contact"), None);
        assert_eq!(Kind::from_prefix("x"), None);
        assert_eq!(Kind::Company.prefix(), "co");
        assert_eq!(Kind::Invite.name(), "invite");
    }

    #[test]
    fn id_from_random_maps_modulo_32() {
        let id = id_from_random(
            Kind::Contact,
            [0, 1, 31, 32, 33, 255, 10, 18, 19, 20, 27, 29],
        );
        assert_eq!(id, "c_01z01zajkmvx");
        assert_eq!(parse_ref(Kind::Contact, &id), Ok(id.clone()));
        let co = id_from_random(Kind::Company, [7; 12]);
        assert_eq!(co, "co_777777777777");
        assert_eq!(handle(Kind::Company, &co), "company/co_777777777777");
    }

    #[test]
    fn accepts_bare_id_and_handle() {
        assert_eq!(parse_ref(Kind::Contact, C), Ok(C.to_owned()));
        assert_eq!(
            parse_ref(Kind::Contact, &handle(Kind::Contact, C)),
            Ok(C.to_owned())
        );
    }

    #[test]
    fn wrong_kind_is_reported() {
        let wrong = |got| RefError::WrongKind {
            expected: Kind::Contact,
            got,
        };
        assert_eq!(
            parse_ref(Kind::Contact, "deal/d_7k2m9q4x1d3f"),
            Err(wrong(Kind::Deal))
        );
        assert_eq!(
            parse_ref(Kind::Contact, "d_7k2m9q4x1d3f"),
            Err(wrong(Kind::Deal))
        );
        // "co" is its own prefix, not "c" followed by "o".
        assert_eq!(
            parse_ref(Kind::Contact, "co_7k2m9q4x1d3f"),
            Err(wrong(Kind::Company))
        );
        assert_eq!(
            parse_ref(Kind::Company, C),
            Err(RefError::WrongKind {
                expected: Kind::Company,
                got: Kind::Contact
            })
        );
        assert_eq!(
            parse_ref(Kind::Contact, "deal/garbage"),
            Err(wrong(Kind::Deal))
        );
    }

    #[test]
    fn malformed_is_reported() {
        let bad = Err(RefError::Malformed {
            expected: Kind::Contact,
        });
        for s in [
            "",
            " c_7k2m9q4x1d3f",
            "c_7k2m9q4x1d3f ",
            "c_7k2m9q4x1d3f\n",
            "c_7k2m9q4x1d3",
            "c_7k2m9q4x1d3ff",
            "c_7K2M9Q4X1D3F",
            "c_7k2m9q4x1d3i",
            "c_7k2m9q4x1d3u",
            "c-7k2m9q4x1d3f",
            "c7k2m9q4x1d3f",
            "x_7k2m9q4x1d3f",
            "_7k2m9q4x1d3f",
            "contact/",
            "contact/d_7k2m9q4x1d3f",
            "contact/contact/c_7k2m9q4x1d3f",
            "Contact/c_7k2m9q4x1d3f",
            "people/c_7k2m9q4x1d3f",
            "contact%2Fc_7k2m9q4x1d3f",
            "c_7k2m9q4x1d3é",
            "c_7k2m9q4x1d3f_",
        ] {
            assert_eq!(parse_ref(Kind::Contact, s), bad, "{s:?}");
        }
    }

    #[test]
    fn messages_show_what_to_send() {
        let e = parse_ref(Kind::Contact, "deal/d_7k2m9q4x1d3f").unwrap_err();
        assert_eq!(
            e.to_string(),
            "expected a contact id like c_7k2m9q4x1d3f or handle contact/c_7k2m9q4x1d3f, got a deal handle"
        );
        let e = parse_ref(Kind::Activity, "nope").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("expected an activity id like a_7k2m9q4x1d3f"),
            "{msg}"
        );
        assert!(msg.contains("a_` and 12 characters"), "{msg}");
        let e = parse_ref(Kind::Deal, "invite/i_7k2m9q4x1d3f").unwrap_err();
        assert!(e.to_string().ends_with("got an invite handle"));
        let e = parse_ref(Kind::Deal, "user/u_7k2m9q4x1d3f").unwrap_err();
        assert!(e.to_string().ends_with("got a user handle"), "{e}");
    }
}
