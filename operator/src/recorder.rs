//! Kubernetes Events, one per distinct message: kube-rs' recorder groups a
//! series by reason alone, so a later message hid behind the first one.

use std::{collections::HashMap, time::Duration};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent, events::v1::EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams, PostParams},
    runtime::events::EventType,
    Api, Client, ResourceExt,
};

/// How long a repeat still joins the series of an earlier event (the same
/// as client-go's and kube-rs's recorders).
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// The apiserver's limit on an event's note is 1024 bytes.
const NOTE_LIMIT: usize = 1000;

/// What makes two events the same: the object (by uid, so a re-created
/// object starts afresh), type, reason, action and the full message.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

/// Publishes events, growing a series (`count`, `lastObservedTime`) for
/// exact repeats instead of creating one object per repeat.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: tokio::sync::Mutex<HashMap<Key, (K8sEvent, Timestamp)>>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Default::default(),
        }
    }

    fn event(&self, key: &Key, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        K8sEvent {
            action: Some(key.action.clone()),
            reason: Some(key.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: Some(key.note.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if key.warning { "Warning" } else { "Normal" }.into()),
            ..Default::default()
        }
    }

    pub async fn publish(
        &self,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            warning: type_ == EventType::Warning,
            reason: reason.into(),
            action: action.into(),
            note: note_of(note),
        };
        let now = Timestamp::now();
        let ttl = jiff_ttl();
        let mut recent = self.recent.lock().await;
        recent.retain(|_, (_, last)| *last + ttl > now);
        let events: Api<K8sEvent> = Api::namespaced(
            self.client.clone(),
            regarding.namespace.as_deref().unwrap_or("default"),
        );
        let event = match recent.get(&key) {
            Some((earlier, _)) => {
                let count = earlier.series.as_ref().map_or(2, |s| s.count + 1);
                let mut event = earlier.clone();
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                events
                    .patch(
                        &event.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&event),
                    )
                    .await?;
                event
            }
            None => {
                let event = self.event(&key, regarding, now);
                events.create(&PostParams::default(), &event).await?;
                event
            }
        };
        recent.insert(key, (event, now));
        Ok(())
    }
}

/// An event's note: one line, and at most [`NOTE_LIMIT`] bytes (the
/// apiserver counts bytes, so a note of 1000 multi-byte characters was
/// refused and the event lost), cut at a character boundary.
fn note_of(text: &str) -> String {
    let mut note = crate::conditions::one_line(text);
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

fn jiff_ttl() -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(SERIES_TTL).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_one_line_within_the_apiservers_byte_limit() {
        assert_eq!(
            note_of("invalid pattern: regex parse error:\n    (x\n    ^\nerror: unclosed group"),
            "invalid pattern: regex parse error: (x ^ error: unclosed group"
        );
        let long = note_of(&"é".repeat(900));
        assert!(long.len() <= NOTE_LIMIT && long.chars().all(|c| c == 'é'));
        assert_eq!(long.chars().count(), NOTE_LIMIT / 2);
    }
}
