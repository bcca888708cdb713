//! One error shape for every operation, as async-nats has it: a kind to branch on, and
//! the error that caused it (if any) for the message.

use std::fmt::{self, Debug, Display};

/// What went wrong, by `kind`, with the cause kept as the source.
pub struct Error<K> {
    kind: K,
    context: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl<K: Copy + Display> Error<K> {
    pub fn new(kind: K) -> Self {
        Self {
            kind,
            context: None,
            source: None,
        }
    }

    pub fn with_source(
        kind: K,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            context: None,
            source: Some(source.into()),
        }
    }

    /// Says where it happened (a subject, a stream, a key), before the kind.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    pub fn kind(&self) -> K {
        self.kind
    }
}

impl<K: Display> Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(context) = &self.context {
            write!(f, "{context}: ")?;
        }
        write!(f, "{}", self.kind)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: Debug> Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("context", &self.context)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: Debug + Display> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl<K: Copy + Display> From<K> for Error<K> {
    fn from(kind: K) -> Self {
        Self::new(kind)
    }
}
