//! Errors of model configuration.

/// A model configuration that cannot be built; names the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A key holds a value outside what the model accepts.
    #[error("invalid model config: `{key}` = {value}: {expected}")]
    Invalid {
        /// The config key at fault, e.g. `height`.
        key: &'static str,
        /// The value given, as text.
        value: String,
        /// What the key must satisfy.
        expected: String,
    },
}

impl ConfigError {
    /// `key` holds `value`, which is not what it must satisfy (`expected`).
    pub fn invalid(key: &'static str, value: impl ToString, expected: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}
