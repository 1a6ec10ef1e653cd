//! Who may grant what: the one rule of key management.
//!
//! **Rule.** No key-management action (create, patch, rotate, re-activate)
//! may leave a key holding a right, a flag or a looser restriction that the
//! acting credential does not hold itself. "Looser" is decided per dimension:
//!
//! | dimension | the result is looser than the actor when |
//! |---|---|
//! | each scope | the result allows it and the actor does not (`admin` allows all) |
//! | `canRead` / `canWrite` | the flag is on and the actor's is off |
//! | `expiresAt` | the actor expires and the result expires later or never (judged when the action sets the expiry or brings the key to life: creation, rotation, a changed `expiresAt`, re-activation) |
//! | IP, country, domain, User-Agent restrictions | the result admits a caller the actor's list does not |
//! | each quota | the actor has one and the result has none or a larger one |
//!
//! A key that an action leaves inactive holds nothing, so deactivating (or
//! deleting, or tightening) a key is never an escalation; re-activating it
//! is judged like creating it, and a new key, or an inactive one the action
//! loosens, is judged as if active. The
//! rule looks only at the result, not at what the key held before: a
//! `keys:manage` key cannot rename, rotate or re-activate a key of its user
//! that holds `admin`, because the result would still hold `admin`.
//!
//! REST acts with the presented key ([`Authority::Key`]); the CLI and the
//! operator act with the database owner's authority ([`Authority::Owner`]),
//! which holds everything. This module is pure: it reads two keys and decides.

use super::{restrictions::Restrictions, ApiKey, Scope};

/// Whose authority a key-management action is taken with.
#[derive(Debug, Clone, Copy)]
pub enum Authority<'a> {
    /// A credential presented over the API.
    Key(&'a ApiKey),
    /// The CLI and the operator: whoever holds the database credentials.
    Owner,
}

/// The names (the seed's field names, or a scope) in which `result` would
/// hold more than `authority`; empty when the action is allowed. `before`
/// is the key as it was (none for a new key).
pub fn exceeds(
    authority: Authority<'_>,
    before: Option<&ApiKey>,
    result: &ApiKey,
) -> Vec<&'static str> {
    let Authority::Key(actor) = authority else {
        return Vec::new();
    };
    // A key left inactive holds nothing, so deactivating or tightening one
    // is always allowed. But an inactive key that this action makes looser
    // than it was (or a new one) is judged as if active: it would otherwise
    // wait, stronger than its maker, for someone to re-activate it.
    if !result.is_active {
        if let Some(b) = before {
            let was = ApiKey {
                is_active: true,
                ..b.clone()
            };
            let now = ApiKey {
                is_active: true,
                ..result.clone()
            };
            if exceeds(Authority::Key(&was), None, &now).is_empty() {
                return Vec::new();
            }
        }
    }
    let mut out: Vec<&'static str> = Scope::ALL
        .into_iter()
        .filter(|s| result.allows(*s) && !actor.allows(*s))
        .map(Scope::as_str)
        .collect();
    if result.can_read && !actor.can_read {
        out.push("canRead");
    }
    if result.can_write && !actor.can_write {
        out.push("canWrite");
    }
    // An expiry is judged when the action sets it or brings the key to
    // life (a new key, a changed `expiresAt`, a re-activation); an active
    // key's unchanged expiry is not, or keys made a moment after their
    // manager with the same default lifetime would be out of its reach.
    let kept = before.is_some_and(|b| b.is_active && b.expires_at == result.expires_at);
    if let (Some(bound), false) = (actor.expires_at, kept) {
        if result.expires_at.is_none_or(|e| e > bound) {
            out.push("expiresAt");
        }
    }
    out.extend(result.restrictions.looser_than(&actor.restrictions));
    const QUOTAS: [&str; 4] = [
        "quotaPerMinute",
        "quotaPerHour",
        "quotaPerDay",
        "quotaPerMonth",
    ];
    for ((name, bound), quota) in QUOTAS.iter().zip(actor.quotas).zip(result.quotas) {
        if bound.is_some_and(|b| quota.is_none_or(|q| q > b)) {
            out.push(name);
        }
    }
    out
}

/// Whether `result` is something `authority` may leave behind.
pub fn check(
    authority: Authority<'_>,
    before: Option<&ApiKey>,
    result: &ApiKey,
) -> Result<(), crate::error::ApiError> {
    let exceeds = exceeds(authority, before, result);
    if exceeds.is_empty() {
        Ok(())
    } else {
        Err(crate::error::ApiError::ExceedsCaller { exceeds })
    }
}

impl Restrictions {
    /// The restriction lists (the seed's field names) in which `self` admits
    /// a caller that `bound` refuses. An empty list admits everyone. For
    /// User-Agent patterns (regular languages, whose inclusion is costly to
    /// decide) a pattern is covered only by the same pattern.
    pub fn looser_than(&self, bound: &Restrictions) -> Vec<&'static str> {
        let mut out = Vec::new();
        let covered = |mine_empty: bool, bound_empty: bool, each: &dyn Fn() -> bool| {
            bound_empty || (!mine_empty && each())
        };
        let (ips, countries, domains, agents) = self.lists();
        let (b_ips, b_countries, b_domains, b_agents) = bound.lists();
        if !covered(ips.is_empty(), b_ips.is_empty(), &|| {
            ips.iter().all(|n| b_ips.iter().any(|b| b.contains(n)))
        }) {
            out.push("ipRestrictions");
        }
        if !covered(countries.is_empty(), b_countries.is_empty(), &|| {
            countries.iter().all(|c| b_countries.contains(c))
        }) {
            out.push("countryRestrictions");
        }
        if !covered(domains.is_empty(), b_domains.is_empty(), &|| {
            domains.iter().all(|d| {
                let host = d.strip_prefix("*.").unwrap_or(d);
                b_domains.iter().any(|b| {
                    b == d || (b.starts_with("*.") && super::restrictions::domain_matches(b, host))
                })
            })
        }) {
            out.push("domainRestrictions");
        }
        if !covered(agents.is_empty(), b_agents.is_empty(), &|| {
            agents
                .iter()
                .all(|a| b_agents.iter().any(|b| b.as_str() == a.as_str()))
        }) {
            out.push("userAgentPatterns");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, sync::Arc};

    use proptest::prelude::*;

    use super::*;
    use crate::access::restrictions::Caller;

    fn key(scopes: &[Scope]) -> ApiKey {
        ApiKey {
            id: "k".into(),
            name: "k".into(),
            key_hash: String::new(),
            user_id: "alice".into(),
            is_active: true,
            expires_at: None,
            can_read: true,
            can_write: true,
            scopes: scopes.to_vec(),
            restrictions: Default::default(),
            quotas: [None; 4],
        }
    }

    fn restricted(
        ips: &[&str],
        countries: &[&str],
        domains: &[&str],
        uas: &[&str],
    ) -> Restrictions {
        let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Restrictions::from_lists(&s(ips), &s(countries), &s(domains), &s(uas)).unwrap()
    }

    #[test]
    fn keys_manage_cannot_leave_an_admin_key() {
        let actor = key(&[Scope::KeysManage, Scope::Read]);
        let mut admin = key(&[Scope::Admin]);
        admin.can_write = false;
        assert_eq!(
            exceeds(Authority::Key(&actor), None, &admin),
            vec!["admin", "analytics:read", "tokens:issue"]
        );
        // Deactivated by the action, it holds nothing; made inactive, it is
        // judged as if active.
        admin.is_active = false;
        assert!(exceeds(Authority::Key(&actor), Some(&admin), &admin).is_empty());
        assert_eq!(exceeds(Authority::Key(&actor), None, &admin).len(), 3);
        // Nor may scopes be planted on an inactive key for a later
        // re-activation.
        let mut reader = key(&[Scope::Read]);
        reader.is_active = false;
        assert_eq!(
            exceeds(Authority::Key(&actor), Some(&reader), &admin),
            vec!["admin", "analytics:read", "tokens:issue"]
        );
        // The owner (CLI, operator) may do anything.
        admin.is_active = true;
        assert!(exceeds(Authority::Owner, None, &admin).is_empty());
    }

    #[test]
    fn a_flag_the_actor_lacks_is_refused_even_without_its_scope() {
        let mut actor = key(&[Scope::KeysManage, Scope::Read]);
        actor.can_write = false;
        let mut target = key(&[Scope::Read]);
        target.can_write = true;
        assert_eq!(
            exceeds(Authority::Key(&actor), None, &target),
            vec!["canWrite"]
        );
        target.can_write = false;
        assert!(exceeds(Authority::Key(&actor), None, &target).is_empty());
    }

    #[test]
    fn expiry_and_quotas_may_only_tighten() {
        let mut actor = key(&[Scope::KeysManage]);
        actor.expires_at = Some(1_000);
        actor.quotas = [Some(10), None, None, Some(100)];
        let mut target = key(&[]);
        target.can_read = false;
        target.can_write = false;
        assert_eq!(
            exceeds(Authority::Key(&actor), None, &target),
            vec!["expiresAt", "quotaPerMinute", "quotaPerMonth"]
        );
        target.expires_at = Some(999);
        target.quotas = [Some(10), Some(5), None, Some(50)];
        assert!(exceeds(Authority::Key(&actor), None, &target).is_empty());
        target.expires_at = Some(1_001);
        assert_eq!(
            exceeds(Authority::Key(&actor), None, &target),
            vec!["expiresAt"]
        );
        // An expiry the action leaves as it was is not judged again.
        assert!(exceeds(Authority::Key(&actor), Some(&target), &target).is_empty());
        let mut asleep = target.clone();
        asleep.is_active = false;
        assert_eq!(
            exceeds(Authority::Key(&actor), Some(&asleep), &target),
            vec!["expiresAt"],
            "re-activation is judged like creation"
        );
    }

    #[test]
    fn restrictions_are_compared_by_what_they_admit() {
        let bound = restricted(
            &["198.51.100.0/24"],
            &["GB"],
            &["*.example.com"],
            &["^App/"],
        );
        let tighter = restricted(
            &["198.51.100.7", "198.51.100.128/25"],
            &["gb"],
            &["a.example.com", "*.b.example.com"],
            &["^App/"],
        );
        assert!(tighter.looser_than(&bound).is_empty());
        assert_eq!(
            Restrictions::default().looser_than(&bound),
            vec![
                "ipRestrictions",
                "countryRestrictions",
                "domainRestrictions",
                "userAgentPatterns"
            ]
        );
        let wider = restricted(
            &["198.51.0.0/16"],
            &["GB", "SE"],
            &["example.com"],
            &["^App/.*"],
        );
        assert_eq!(wider.looser_than(&bound).len(), 4);
        assert!(bound.looser_than(&Restrictions::default()).is_empty());
    }

    fn any_scopes() -> impl Strategy<Value = Vec<Scope>> {
        proptest::sample::subsequence(Scope::ALL.to_vec(), 0..=6)
    }

    prop_compose! {
        fn any_key()(
            scopes in any_scopes(),
            active in any::<bool>(),
            can_read in any::<bool>(),
            can_write in any::<bool>(),
            expires in proptest::option::of(0i64..10),
            nets in proptest::sample::subsequence(vec!["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "192.0.2.0/24", "::ffff:10.0.0.0/104"], 0..=3),
            countries in proptest::sample::subsequence(vec!["GB", "SE", "US"], 0..=2),
            domains in proptest::sample::subsequence(vec!["example.com", "*.example.com", "a.example.com", "*.a.example.com", "other.org"], 0..=3),
            agents in proptest::sample::subsequence(vec!["^App/", "Bot"], 0..=2),
            quotas in proptest::array::uniform4(proptest::option::of(0i64..5)),
        ) -> ApiKey {
            ApiKey {
                is_active: active,
                can_read,
                can_write,
                expires_at: expires,
                restrictions: Arc::new(restricted(&nets, &countries, &domains, &agents)),
                quotas,
                ..key(&scopes)
            }
        }
    }

    prop_compose! {
        fn any_caller()(
            ip in proptest::option::of(proptest::sample::select(vec!["10.1.2.3", "10.1.9.9", "10.7.0.1", "192.0.2.1", "203.0.113.1"])),
            country in proptest::option::of(proptest::sample::select(vec!["GB", "SE", "US", "FR"])),
            domain in proptest::option::of(proptest::sample::select(vec!["example.com", "a.example.com", "x.a.example.com", "b.example.com", "other.org"])),
            ua in proptest::option::of(proptest::sample::select(vec!["App/1", "Bot", "curl"])),
        ) -> Caller {
            Caller {
                ip: ip.map(|i| i.parse::<IpAddr>().unwrap()),
                country: country.map(str::to_owned),
                domain: domain.map(str::to_owned),
                user_agent: ua.map(str::to_owned),
            }
        }
    }

    proptest! {
        /// Whatever an allowed result admits, the actor admits too: every
        /// scope, every flag, every caller, every moment and every quota.
        #[test]
        fn an_allowed_result_never_holds_more_than_its_actor(
            actor in any_key(), result in any_key(), caller in any_caller(), now in 0i64..12,
        ) {
            prop_assume!(actor.is_active);
            if exceeds(Authority::Key(&actor), None, &result).is_empty() {
                for s in Scope::ALL {
                    prop_assert!(!result.allows(s) || actor.allows(s), "scope {s}");
                }
                prop_assert!(!result.can_write || actor.can_write);
                prop_assert!(!result.can_read || actor.can_read);
                if result.restrictions.check(&caller).is_ok() {
                    prop_assert!(actor.restrictions.check(&caller).is_ok(), "{caller:?}");
                }
                let live = |k: &ApiKey| k.expires_at.is_none_or(|e| e > now);
                prop_assert!(!live(&result) || live(&actor));
                for (b, q) in actor.quotas.iter().zip(result.quotas) {
                    prop_assert!(b.is_none_or(|b| q.is_some_and(|q| q <= b)));
                }
            }
        }

        /// A key is always allowed to leave behind a copy of itself, and the
        /// owner anything.
        #[test]
        fn a_key_never_exceeds_itself(k in any_key()) {
            prop_assert!(exceeds(Authority::Key(&k), None, &k).is_empty());
            prop_assert!(exceeds(Authority::Owner, None, &k).is_empty());
        }
    }
}
