//! A change to an API key's settings, in the seed's field names: the body of
//! `POST`/`PATCH /api-keys` and of `syncstore keys update`.

use serde::Deserialize;

use super::{restrictions::Restrictions, Scope};
use crate::{error::ApiError, storage::keys::KeyView, text};

/// The body of create and patch, in the seed's field names. On a patch an
/// absent field is left alone; `null` clears a nullable one.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyFields {
    pub name: Option<String>,
    /// On create, the owner (default: the caller's user).
    pub user_id: Option<String>,
    pub is_active: Option<bool>,
    /// Unix ms or RFC 3339 (the seed's DateTime); `null` never expires.
    #[serde(default, deserialize_with = "crate::instant::present")]
    #[schema(value_type = Option<crate::instant::Written>)]
    pub expires_at: Option<Option<i64>>,
    pub can_read: Option<bool>,
    pub can_write: Option<bool>,
    #[schema(schema_with = crate::access::scope_list)]
    pub scopes: Option<Vec<Scope>>,
    pub ip_restrictions: Option<Vec<String>>,
    pub country_restrictions: Option<Vec<String>>,
    pub domain_restrictions: Option<Vec<String>>,
    pub user_agent_patterns: Option<Vec<String>>,
    /// Requests per minute; `null` clears the quota.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub quota_per_minute: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub quota_per_hour: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub quota_per_day: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub quota_per_month: Option<Option<i64>>,
}

/// Absent stays `None`; `null` becomes `Some(None)`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl KeyFields {
    /// Checks every text field of the body by the one text rule, before
    /// anything is stored (`details.field` names the field).
    pub fn check_text(&self) -> Result<(), ApiError> {
        check_text(
            self.name.as_deref(),
            self.user_id.as_deref(),
            [
                ("ipRestrictions", self.ip_restrictions.as_deref()),
                ("countryRestrictions", self.country_restrictions.as_deref()),
                ("domainRestrictions", self.domain_restrictions.as_deref()),
                ("userAgentPatterns", self.user_agent_patterns.as_deref()),
            ],
        )
        .map_err(text::Invalid::body)
    }

    /// Applies the fields to `v`, then checks the result as a whole.
    pub fn apply(self, v: &mut KeyView) -> Result<(), ApiError> {
        self.check_text()?;
        if let Some(name) = self.name {
            v.name = name;
        }
        if let Some(a) = self.is_active {
            v.is_active = a;
        }
        if let Some(e) = self.expires_at {
            v.expires_at = e;
        }
        if let Some(r) = self.can_read {
            v.can_read = r;
        }
        if let Some(w) = self.can_write {
            v.can_write = w;
        }
        if let Some(s) = self.scopes {
            v.scopes = s;
        }
        if let Some(l) = self.ip_restrictions {
            v.ip_restrictions = l;
        }
        if let Some(l) = self.country_restrictions {
            v.country_restrictions = l;
        }
        if let Some(l) = self.domain_restrictions {
            v.domain_restrictions = l;
        }
        if let Some(l) = self.user_agent_patterns {
            v.user_agent_patterns = l;
        }
        for (field, slot, value) in [
            (
                "quotaPerMinute",
                &mut v.quota_per_minute,
                self.quota_per_minute,
            ),
            ("quotaPerHour", &mut v.quota_per_hour, self.quota_per_hour),
            ("quotaPerDay", &mut v.quota_per_day, self.quota_per_day),
            (
                "quotaPerMonth",
                &mut v.quota_per_month,
                self.quota_per_month,
            ),
        ] {
            if let Some(q) = value {
                if q.is_some_and(|q| q < 0) {
                    return Err(text::Invalid::new(field, "must not be negative").body());
                }
                *slot = q;
            }
        }
        // Each list on its own, so that a refusal names its field.
        let none: &[String] = &[];
        for (field, lists) in [
            ("ipRestrictions", [&v.ip_restrictions[..], none, none, none]),
            (
                "countryRestrictions",
                [none, &v.country_restrictions, none, none],
            ),
            (
                "domainRestrictions",
                [none, none, &v.domain_restrictions, none],
            ),
            (
                "userAgentPatterns",
                [none, none, none, &v.user_agent_patterns],
            ),
        ] {
            Restrictions::from_lists(lists[0], lists[1], lists[2], lists[3])
                .map_err(|reason| text::Invalid::new(field, reason).body())?;
        }
        Ok(())
    }
}

/// The text of a key's settings (from REST, the CLI or an `ApiKey`
/// resource), by the one text rule: a name and a user id as ids, each
/// restriction as a bounded entry.
pub fn check_text(
    name: Option<&str>,
    user_id: Option<&str>,
    lists: [(&str, Option<&[String]>); 4],
) -> Result<(), text::Invalid> {
    if let Some(name) = name {
        text::check("name", name, text::ID)?;
    }
    if let Some(user) = user_id {
        crate::sync::validate_user_id(user)?;
    }
    for (field, list) in lists {
        text::check_all(field, list.unwrap_or_default(), text::RESTRICTION)?;
    }
    Ok(())
}
