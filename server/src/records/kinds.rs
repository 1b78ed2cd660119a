//! The three record kinds as data: table, fields, unique key, plan cap.

use crate::config::Plan;
use crate::wire::handle::Kind;
use crate::wire::query::{self, Schema};

/// How a field's value is checked and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FType {
    /// Free text up to `max` characters, one line unless `multiline`.
    Text {
        max: usize,
        multiline: bool,
    },
    /// An email address; stored as sent (trimmed) plus a lowercase key column.
    Email,
    /// A web domain, normalised to a lowercase host.
    Domain,
    /// Integer (money in cents).
    Int,
    /// ISO 4217 code: three uppercase letters.
    Currency,
    /// One of a fixed list.
    Enum(&'static [&'static str]),
    /// A link to another record of the workspace.
    Ref(Kind),
    Tags,
    Custom,
    Time,
}

#[derive(Debug)]
pub struct FieldDef {
    pub name: &'static str,
    pub ty: FType,
}

pub struct KindDef {
    pub kind: Kind,
    /// Plural, as in the path and the table: `contacts`.
    pub plural: &'static str,
    pub schema: &'static Schema,
    /// Writable fields in display order.
    pub fields: &'static [FieldDef],
    /// Field that must be present on create.
    pub required: Option<&'static str>,
    /// Upsert key: POST with this field set merges into the record that has it.
    pub upsert_key: Option<&'static str>,
    /// `workspaces` column counting these records.
    pub counter: &'static str,
    pub cap: fn(&Plan) -> i64,
    /// Columns `search=` matches.
    pub search: &'static [&'static str],
    /// Values a field takes when absent or cleared (it can never be empty).
    pub defaults: &'static [(&'static str, &'static str)],
}

const fn text(name: &'static str, max: usize) -> FieldDef {
    FieldDef {
        name,
        ty: FType::Text {
            max,
            multiline: false,
        },
    }
}

const NOTE: FType = FType::Text {
    max: 10_000,
    multiline: true,
};

pub static CONTACT: KindDef = KindDef {
    kind: Kind::Contact,
    plural: "contacts",
    schema: &query::CONTACT,
    fields: &[
        text("name", 500),
        FieldDef {
            name: "email",
            ty: FType::Email,
        },
        text("phone", 100),
        text("title", 500),
        FieldDef {
            name: "company_id",
            ty: FType::Ref(Kind::Company),
        },
        text("stage", 100),
        FieldDef {
            name: "tags",
            ty: FType::Tags,
        },
        FieldDef {
            name: "custom",
            ty: FType::Custom,
        },
        FieldDef {
            name: "follow_up_at",
            ty: FType::Time,
        },
        FieldDef {
            name: "follow_up_note",
            ty: NOTE,
        },
    ],
    required: None,
    upsert_key: Some("email"),
    counter: "contacts_count",
    cap: |p| p.contacts,
    search: &["name", "email", "title", "phone", "tags"],
    defaults: &[],
};

pub static COMPANY: KindDef = KindDef {
    kind: Kind::Company,
    plural: "companies",
    schema: &query::COMPANY,
    fields: &[
        text("name", 500),
        FieldDef {
            name: "domain",
            ty: FType::Domain,
        },
        text("industry", 200),
        FieldDef {
            name: "tags",
            ty: FType::Tags,
        },
        FieldDef {
            name: "custom",
            ty: FType::Custom,
        },
    ],
    required: None,
    upsert_key: Some("domain"),
    counter: "companies_count",
    cap: |p| p.companies,
    search: &["name", "domain"],
    defaults: &[],
};

pub const DEAL_STATUSES: &[&str] = &["open", "won", "lost"];

pub static DEAL: KindDef = KindDef {
    kind: Kind::Deal,
    plural: "deals",
    schema: &query::DEAL,
    fields: &[
        text("title", 500),
        FieldDef {
            name: "amount_cents",
            ty: FType::Int,
        },
        FieldDef {
            name: "currency",
            ty: FType::Currency,
        },
        text("stage", 100),
        FieldDef {
            name: "status",
            ty: FType::Enum(DEAL_STATUSES),
        },
        FieldDef {
            name: "contact_id",
            ty: FType::Ref(Kind::Contact),
        },
        FieldDef {
            name: "company_id",
            ty: FType::Ref(Kind::Company),
        },
        FieldDef {
            name: "tags",
            ty: FType::Tags,
        },
        FieldDef {
            name: "custom",
            ty: FType::Custom,
        },
        FieldDef {
            name: "follow_up_at",
            ty: FType::Time,
        },
        FieldDef {
            name: "follow_up_note",
            ty: NOTE,
        },
    ],
    required: Some("title"),
    upsert_key: None,
    counter: "deals_count",
    cap: |p| p.deals,
    search: &["title"],
    defaults: &[("status", "open")],
};

impl KindDef {
    pub fn field(&self, name: &str) -> Option<&'static FieldDef> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Body fields accepted on create/update.
    pub fn body_fields(&self) -> Vec<&'static str> {
        self.fields.iter().map(|f| f.name).collect()
    }
}
