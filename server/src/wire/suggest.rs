//! "Did you mean …": the allowed name an unknown one was most likely meant
//! to be, for the hints of `unknown_field` errors.

/// Names an agent sends for a field that has another name here.
const ALIASES: &[(&str, &str)] = &[
    ("company", "company_id"),
    ("contact", "contact_id"),
    ("deal", "deal_id"),
    ("amount", "amount_cents"),
    ("value", "amount_cents"),
    ("mail", "email"),
    ("e_mail", "email"),
    ("phone_number", "phone"),
    ("website", "domain"),
    ("url", "domain"),
    ("note", "follow_up_note"),
    ("notes", "follow_up_note"),
    ("due", "follow_up_at"),
    ("follow_up", "follow_up_at"),
    ("reminder", "follow_up_at"),
    ("contact_id", "contact"),
    ("deal_id", "deal"),
    ("tag", "tags"),
    ("type", "kind"),
    ("text", "body"),
    ("name", "title"),
    ("title", "name"),
];

/// The allowed name `unknown` most likely stands for: an alias, the same
/// name in another case or spelling (`-` for `_`), or one a couple of typed
/// letters away. `None` when nothing is close.
pub fn did_you_mean<'a>(unknown: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let folded = unknown.to_ascii_lowercase().replace('-', "_");
    if let Some(a) = allowed.iter().find(|a| **a == folded) {
        return Some(a);
    }
    if let Some((_, to)) = ALIASES
        .iter()
        .find(|(from, to)| *from == folded && allowed.contains(to))
    {
        return allowed.iter().copied().find(|a| a == to);
    }
    // A typo: at most 1 edit for short names, 2 for longer ones.
    let most = if folded.chars().count() <= 4 { 1 } else { 2 };
    allowed
        .iter()
        .map(|a| (strsim::damerau_levenshtein(&folded, a), *a))
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// The hint of an `unknown_field` error for `unknown` names: what each was
/// probably meant to be, else to remove it.
pub fn unknown_hint(unknown: &[&str], allowed: &[&str], what: &str) -> String {
    let guesses: Vec<String> = unknown
        .iter()
        .filter_map(|u| did_you_mean(u, allowed).map(|a| format!("{a:?} for {u:?}")))
        .collect();
    if allowed.is_empty() {
        format!("remove it; this endpoint takes no {what} (besides format=)")
    } else if guesses.is_empty() {
        format!("remove it; `allowed` lists the {what} this endpoint takes")
    } else {
        format!(
            "did you mean {}? Otherwise remove it; `allowed` lists the {what} this endpoint takes",
            guesses.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTACT: &[&str] = &[
        "name",
        "email",
        "phone",
        "title",
        "company_id",
        "stage",
        "tags",
        "custom",
        "follow_up_at",
        "follow_up_note",
    ];

    #[test]
    fn typos_aliases_and_case_find_their_field() {
        assert_eq!(did_you_mean("nmae", CONTACT), Some("name"));
        assert_eq!(did_you_mean("emial", CONTACT), Some("email"));
        assert_eq!(did_you_mean("Email", CONTACT), Some("email"));
        assert_eq!(did_you_mean("follow-up-at", CONTACT), Some("follow_up_at"));
        assert_eq!(did_you_mean("company", CONTACT), Some("company_id"));
        assert_eq!(did_you_mean("tag", CONTACT), Some("tags"));
        assert_eq!(did_you_mean("stgae", CONTACT), Some("stage"));
    }

    #[test]
    fn nothing_close_is_no_guess() {
        assert_eq!(did_you_mean("workspace_id", CONTACT), None);
        assert_eq!(did_you_mean("created_at", CONTACT), None);
        assert_eq!(did_you_mean("xyz", CONTACT), None);
        // An alias only points at a field that is allowed here.
        assert_eq!(did_you_mean("amount", CONTACT), None);
    }

    #[test]
    fn the_hint_names_each_guess() {
        let h = unknown_hint(&["nmae", "emial", "bogus"], CONTACT, "fields");
        assert!(
            h.starts_with("did you mean \"name\" for \"nmae\", \"email\" for \"emial\"?"),
            "{h}"
        );
        let h = unknown_hint(&["bogus"], CONTACT, "fields");
        assert_eq!(
            h,
            "remove it; `allowed` lists the fields this endpoint takes"
        );
    }
}
