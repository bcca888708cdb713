//! Validated values: warehouse ids, SKUs, locations, quantities and reasons.
//!
//! Ids are safe subject tokens and KV keys by construction: 1 to 64 characters of
//! `A-Z a-z 0-9 _ -`, the first one a letter or digit. A value that breaks the rule
//! cannot be built, so nothing downstream has to check again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What is wrong with one field of an event or a command, named by the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: String,
    pub problem: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same problem, reported under another field name (`location` used as `from`).
    pub fn for_field(self, field: &str) -> Self {
        Self {
            field: field.to_string(),
            ..self
        }
    }
}

/// Longest id, in characters.
pub const MAX_ID_LEN: usize = 64;

/// Longest `reason` of a destroyed event, in characters.
pub const MAX_REASON_LEN: usize = 200;

fn check_token(field: &str, value: &str) -> Result<(), InvalidField> {
    let problem = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.chars().count() > MAX_ID_LEN {
        format!(
            "{:?} is {} characters long; at most {MAX_ID_LEN} are allowed",
            value,
            value.chars().count()
        )
    } else if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("{value:?} must start with a letter or a digit")
    } else if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        format!("{value:?} contains {bad:?}; only A-Z a-z 0-9 _ - are allowed")
    } else {
        return Ok(());
    };
    Err(InvalidField::new(field, problem))
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The field name this value is reported under.
            pub const FIELD: &'static str = $field;

            pub fn parse(value: &str) -> Result<Self, InvalidField> {
                check_token($field, value)?;
                Ok(Self(value.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidField;
            fn try_from(value: String) -> Result<Self, InvalidField> {
                check_token($field, &value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidField;
            fn from_str(value: &str) -> Result<Self, InvalidField> {
                Self::parse(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_id!(
    /// A warehouse, e.g. `ams1`.
    WarehouseId,
    "warehouse"
);
token_id!(
    /// A product's stock keeping unit, e.g. `apple`.
    Sku,
    "sku"
);
token_id!(
    /// A place inside a warehouse, e.g. `A43`.
    Location,
    "location"
);

token_id!(
    /// One transfer between warehouses; its two events share it.
    TransferId,
    "transfer_id"
);

/// A number of units that moved: a positive integer that fits in u32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(value: u64) -> Result<Self, InvalidField> {
        match u32::try_from(value) {
            Ok(0) => Err(InvalidField::new("quantity", "must be at least 1")),
            Ok(n) => Ok(Self(n)),
            Err(_) => Err(InvalidField::new(
                "quantity",
                format!("{value} is too large; at most {} is allowed", u32::MAX),
            )),
        }
    }

    /// Parses the text of a command-line argument.
    pub fn parse(value: &str) -> Result<Self, InvalidField> {
        Self::new(parse_count_text(value)?.into())
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u64> for Quantity {
    type Error = InvalidField;
    fn try_from(value: u64) -> Result<Self, InvalidField> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> u32 {
        value.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses a count given as text (0 allowed): a non-negative integer that fits in u32.
pub fn parse_count_text(value: &str) -> Result<u32, InvalidField> {
    let trimmed = value.trim();
    if let Ok(n) = trimmed.parse::<u32>() {
        return Ok(n);
    }
    let problem = match trimmed.parse::<i128>() {
        Ok(n) if n < 0 => format!("{n} is negative; a whole number of units is expected"),
        Ok(n) => format!("{n} is too large; at most {} is allowed", u32::MAX),
        Err(_) => format!("{value:?} is not a whole number of units"),
    };
    Err(InvalidField::new("quantity", problem))
}

/// Why stock was destroyed: free text of at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reason(String);

impl Reason {
    pub fn parse(value: &str) -> Result<Self, InvalidField> {
        let len = value.chars().count();
        if value.trim().is_empty() {
            return Err(InvalidField::new("reason", "must not be empty"));
        }
        if len > MAX_REASON_LEN {
            return Err(InvalidField::new(
                "reason",
                format!("is {len} characters long; at most {MAX_REASON_LEN} are allowed"),
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Reason {
    type Error = InvalidField;
    fn try_from(value: String) -> Result<Self, InvalidField> {
        Self::parse(&value)
    }
}

impl From<Reason> for String {
    fn from(value: Reason) -> String {
        value.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_safe_tokens() {
        for ok in ["ams1", "A43", "apple", "x", "9-lives_2", &"a".repeat(64)] {
            assert!(WarehouseId::parse(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn ids_refuse_what_is_not_a_safe_subject_token() {
        for bad in [
            "ams.1",
            "a*",
            "a>",
            "apple pie",
            "_x",
            "-x",
            "",
            &"a".repeat(65),
            "äpfel",
        ] {
            let err = Sku::parse(bad).expect_err(bad);
            assert_eq!(err.field, "sku", "{bad}");
        }
        let err = Location::parse("A.43").unwrap_err();
        assert_eq!(
            err.to_string(),
            "location: \"A.43\" contains '.'; only A-Z a-z 0-9 _ - are allowed"
        );
    }

    #[test]
    fn quantity_is_a_positive_u32() {
        assert_eq!(Quantity::parse("3").unwrap().get(), 3);
        assert_eq!(
            Quantity::parse("0").unwrap_err().to_string(),
            "quantity: must be at least 1"
        );
        assert!(Quantity::parse("-2")
            .unwrap_err()
            .problem
            .contains("negative"));
        assert!(Quantity::parse("4294967296")
            .unwrap_err()
            .problem
            .contains("too large"));
        assert!(Quantity::parse("2.5").is_err());
        assert_eq!(parse_count_text("0").unwrap(), 0);
    }

    #[test]
    fn reason_is_bounded() {
        assert!(Reason::parse("rotten").is_ok());
        assert!(Reason::parse(&"x".repeat(201)).is_err());
        assert!(Reason::parse("  ").is_err());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let ok: WarehouseId = serde_json::from_str("\"ams1\"").unwrap();
        assert_eq!(ok.as_str(), "ams1");
        assert!(serde_json::from_str::<WarehouseId>("\"ams.1\"").is_err());
        assert!(serde_json::from_str::<Quantity>("0").is_err());
    }
}
