//! `AuthorizationPolicy` (who may call a service, checked on its inbound side) and
//! `RequestAuthentication` (which JWTs a service accepts). Shapes follow Istio's security API.
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The service whose inbound side enforces this policy.
    pub service: String,
    /// What happens to a request no rule matched. Absent: as in Istio, `Deny` when the policy
    /// has an `Allow` rule, else `Allow` (see
    /// [`AuthorizationPolicySpec::effective_default_action`]). Absent stays absent when the
    /// policy is written back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<AuthzAction>,
    /// Ordered: deny rules are evaluated before allow rules, as in Istio.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

impl AuthorizationPolicySpec {
    /// Whether any rule allows (an `Allow` rule makes the implicit default `Deny`).
    pub fn has_allow_rules(&self) -> bool {
        self.rules.iter().any(|r| r.action == AuthzAction::Allow)
    }

    /// The default action in force: `defaultAction` when written; otherwise `Deny` when the
    /// policy has an `Allow` rule (an allow-list denies what it does not list, as in Istio) and
    /// `Allow` when it has only `Deny` rules (or none).
    pub fn effective_default_action(&self) -> AuthzAction {
        self.default_action.unwrap_or(if self.has_allow_rules() {
            AuthzAction::Deny
        } else {
            AuthzAction::Allow
        })
    }

    /// True when the policy denies by default only because it has `Allow` rules and no
    /// `defaultAction` (what [`crate::notice`] points out).
    pub fn denies_by_implicit_default(&self) -> bool {
        self.default_action.is_none() && self.has_allow_rules()
    }
}

/// A rule's action, or a policy's default action. (`Default` is `Allow` for compatibility; a
/// policy's default follows [`AuthorizationPolicySpec::effective_default_action`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: AuthzAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<AuthzSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AuthzOperation>,
    /// JWT claim conditions (all must hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<ClaimCondition>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzSource {
    /// SPIFFE IDs; a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// `issuer/subject` of a validated JWT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzOperation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Exact paths, or prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimCondition {
    pub claim: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthentication {
    pub metadata: ObjectMeta,
    pub spec: RequestAuthenticationSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    pub service: String,
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Where the token is read; `Authorization: Bearer` when both lists are empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
}

/// Exactly one of the fields must be set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}
