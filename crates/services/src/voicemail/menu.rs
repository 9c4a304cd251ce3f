//! The pure logic of the menus: PIN tries, which mailboxes a caller may mean, the order of
//! messages in an access session and where each key leads, whether a deposit is taken,
//! retention. No I/O, no clock: times come in as arguments.

use switchboard_config::{Agent, Mailbox};
use switchboard_store::{Counts, MessageState, StoredMessage};

/// Wrong PINs that end the access call.
pub const MAX_PIN_TRIES: u32 = 3;

/// The result of a PIN entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    Accepted,
    /// Wrong; `failed` wrong entries so far, the caller may try again.
    Retry {
        failed: u32,
    },
    /// Wrong for the last allowed time: the call ends.
    Locked,
}

/// Checks `entered` against the mailbox's PIN after `failed_before` wrong entries. The
/// comparison takes the same time wherever the first difference is.
pub fn check_pin(expected: &str, entered: &str, failed_before: u32) -> PinOutcome {
    if failed_before >= MAX_PIN_TRIES {
        return PinOutcome::Locked;
    }
    let same_len = expected.len() == entered.len();
    let diff = expected
        .bytes()
        .zip(entered.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if same_len && diff == 0 && !expected.is_empty() {
        return PinOutcome::Accepted;
    }
    let failed = failed_before + 1;
    if failed >= MAX_PIN_TRIES {
        PinOutcome::Locked
    } else {
        PinOutcome::Retry { failed }
    }
}

/// The mailboxes a caller on DN `caller` reaches without naming one: the mailbox of the
/// agent on that DN and those of the agent's groups, by number.
pub fn mailboxes_of_caller<'a>(
    caller: &str,
    agents: &[Agent],
    mailboxes: impl IntoIterator<Item = &'a Mailbox>,
) -> Vec<String> {
    let Some(agent) = agents.iter().find(|a| a.dn.as_deref() == Some(caller)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = mailboxes
        .into_iter()
        .filter(|m| {
            m.owner_agent.as_deref() == Some(agent.login_id.as_str())
                || m.owner_group
                    .as_ref()
                    .is_some_and(|g| agent.groups.contains(g))
        })
        .map(|m| m.number.clone())
        .collect();
    out.sort();
    out
}

/// Who is listening, for the record of a group mailbox: the agent on the calling DN, else
/// the calling number.
pub fn listener(caller: &str, agents: &[Agent]) -> String {
    agents
        .iter()
        .find(|a| a.dn.as_deref() == Some(caller))
        .map_or_else(|| caller.to_owned(), |a| a.login_id.clone())
}

/// Whether a mailbox with `counts` takes another message.
pub fn takes_message(counts: Counts, max_messages: u32) -> bool {
    counts.total() < max_messages
}

/// Messages received before this are past a retention of `days`.
pub fn retention_cutoff(now_ms: u64, days: u32) -> u64 {
    now_ms.saturating_sub(u64::from(days) * 86_400_000)
}

/// The order an access session plays messages in: new ones first, then saved ones, each
/// oldest first.
pub fn play_order(messages: &[StoredMessage]) -> Vec<String> {
    let mut sorted: Vec<&StoredMessage> = messages.iter().collect();
    sorted.sort_by_key(|m| {
        (
            m.state != MessageState::New,
            m.message.received_ms,
            m.message.id.clone(),
        )
    });
    sorted.into_iter().map(|m| m.message.id.clone()).collect()
}

/// A key pressed after a message played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKey {
    Replay,
    Save,
    Delete,
    Previous,
    Next,
    MainMenu,
}

impl MessageKey {
    /// The keys of the message menu: 1 replay, 2 save, 3 delete, 4 previous, 6 next, 0 main
    /// menu.
    pub const ALL: [(char, MessageKey); 6] = [
        ('1', MessageKey::Replay),
        ('2', MessageKey::Save),
        ('3', MessageKey::Delete),
        ('4', MessageKey::Previous),
        ('6', MessageKey::Next),
        ('0', MessageKey::MainMenu),
    ];

    pub fn parse(s: &str) -> Option<MessageKey> {
        let mut chars = s.chars();
        let (Some(c), None) = (chars.next(), chars.next()) else {
            return None;
        };
        MessageKey::ALL
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, key)| *key)
    }
}

/// What a key does to the mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Save(String),
    Delete(String),
}

/// What the caller hears next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The message at this position of the session.
    Play(usize),
    /// Past the last (or before the first) message: "no more messages", then the main menu.
    NoMore,
    MainMenu,
}

/// An access session: the mailbox, who listens, and the messages in the order they were
/// when the session started (so saving one does not move it under the caller's feet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub tenant: String,
    pub mailbox: String,
    pub listener: String,
    pub ids: Vec<String>,
    pub started_ms: u64,
}

impl Session {
    /// The message at `index`, if the session has one there.
    pub fn id_at(&self, index: usize) -> Option<&str> {
        self.ids.get(index).map(String::as_str)
    }

    /// Where `key` pressed after the message at `index` leads, and what it changes. A
    /// deleted message leaves the session; the one after it takes its position.
    pub fn after(&mut self, index: usize, key: MessageKey) -> (Option<Effect>, Nav) {
        let Some(id) = self.id_at(index).map(str::to_owned) else {
            return (None, Nav::NoMore);
        };
        let next = |i: usize, len: usize| if i < len { Nav::Play(i) } else { Nav::NoMore };
        match key {
            MessageKey::Replay => (None, Nav::Play(index)),
            MessageKey::Save => (Some(Effect::Save(id)), next(index + 1, self.ids.len())),
            MessageKey::Delete => {
                self.ids.remove(index);
                (Some(Effect::Delete(id)), next(index, self.ids.len()))
            }
            MessageKey::Previous => match index.checked_sub(1) {
                Some(i) => (None, Nav::Play(i)),
                None => (None, Nav::NoMore),
            },
            MessageKey::Next => (None, next(index + 1, self.ids.len())),
            MessageKey::MainMenu => (None, Nav::MainMenu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_store::NewMessage;

    #[test]
    fn three_wrong_pins_lock() {
        assert_eq!(check_pin("1234", "1234", 0), PinOutcome::Accepted);
        assert_eq!(check_pin("1234", "1234", 2), PinOutcome::Accepted);
        assert_eq!(
            check_pin("1234", "9999", 0),
            PinOutcome::Retry { failed: 1 }
        );
        assert_eq!(check_pin("1234", "123", 1), PinOutcome::Retry { failed: 2 });
        assert_eq!(check_pin("1234", "12345", 2), PinOutcome::Locked);
        assert_eq!(
            check_pin("1234", "1234", 3),
            PinOutcome::Locked,
            "no 4th try"
        );
        assert_eq!(check_pin("", "", 0), PinOutcome::Retry { failed: 1 });
    }

    fn agent(id: &str, dn: &str, groups: &[&str]) -> Agent {
        Agent {
            login_id: id.into(),
            name: String::new(),
            dn: Some(dn.into()),
            skills: Default::default(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn a_caller_reaches_the_agents_and_its_groups_mailboxes() {
        let agents = [agent("a1", "1001", &["sales"]), agent("a2", "1002", &[])];
        let mut own = Mailbox::new("8001", "1111");
        own.owner_agent = Some("a1".into());
        let mut sales = Mailbox::new("8100", "1234");
        sales.owner_group = Some("sales".into());
        let mut support = Mailbox::new("8200", "1234");
        support.owner_group = Some("support".into());
        let boxes = [sales, support, own];
        assert_eq!(
            mailboxes_of_caller("1001", &agents, &boxes),
            ["8001", "8100"]
        );
        assert!(mailboxes_of_caller("1002", &agents, &boxes).is_empty());
        assert!(mailboxes_of_caller("+1555", &agents, &boxes).is_empty());
        assert_eq!(listener("1001", &agents), "a1");
        assert_eq!(listener("+1555", &agents), "+1555");
    }

    #[test]
    fn full_mailbox_and_retention() {
        assert!(takes_message(Counts { new: 1, saved: 1 }, 3));
        assert!(!takes_message(Counts { new: 2, saved: 1 }, 3));
        assert!(!takes_message(Counts { new: 0, saved: 0 }, 0));
        assert_eq!(retention_cutoff(10 * 86_400_000, 3), 7 * 86_400_000);
        assert_eq!(retention_cutoff(5, 30), 0);
    }

    fn stored(id: &str, at: u64, state: MessageState) -> StoredMessage {
        StoredMessage {
            message: NewMessage {
                tenant: "t".into(),
                mailbox: "8100".into(),
                id: id.into(),
                caller: None,
                conn_id: None,
                received_ms: at,
                duration_ms: 1,
                file: String::new(),
                user_data: Default::default(),
            },
            state,
            heard_by: Vec::new(),
        }
    }

    #[test]
    fn new_messages_play_first_oldest_first() {
        let m = [
            stored("s-old", 1, MessageState::Saved),
            stored("n-new", 30, MessageState::New),
            stored("n-old", 20, MessageState::New),
            stored("s-new", 40, MessageState::Saved),
        ];
        assert_eq!(play_order(&m), ["n-old", "n-new", "s-old", "s-new"]);
    }

    fn session(ids: &[&str]) -> Session {
        Session {
            tenant: "t".into(),
            mailbox: "8100".into(),
            listener: "a1".into(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            started_ms: 0,
        }
    }

    #[test]
    fn keys_after_a_message() {
        let mut s = session(&["a", "b", "c"]);
        assert_eq!(s.after(0, MessageKey::Replay), (None, Nav::Play(0)));
        assert_eq!(s.after(0, MessageKey::Next), (None, Nav::Play(1)));
        assert_eq!(s.after(2, MessageKey::Next), (None, Nav::NoMore));
        assert_eq!(s.after(0, MessageKey::Previous), (None, Nav::NoMore));
        assert_eq!(s.after(2, MessageKey::Previous), (None, Nav::Play(1)));
        assert_eq!(
            s.after(1, MessageKey::Save),
            (Some(Effect::Save("b".into())), Nav::Play(2))
        );
        assert_eq!(s.after(1, MessageKey::MainMenu), (None, Nav::MainMenu));
        assert_eq!(
            s.after(1, MessageKey::Delete),
            (Some(Effect::Delete("b".into())), Nav::Play(1))
        );
        assert_eq!(s.ids, ["a", "c"], "the deleted one leaves the session");
        assert_eq!(
            s.after(1, MessageKey::Delete),
            (Some(Effect::Delete("c".into())), Nav::NoMore)
        );
        assert_eq!(s.after(5, MessageKey::Delete), (None, Nav::NoMore));
        assert_eq!(s.ids, ["a"]);
    }

    #[test]
    fn message_keys_parse() {
        assert_eq!(MessageKey::parse("3"), Some(MessageKey::Delete));
        assert_eq!(MessageKey::parse("0"), Some(MessageKey::MainMenu));
        assert_eq!(MessageKey::parse("5"), None);
        assert_eq!(MessageKey::parse("33"), None);
        assert_eq!(MessageKey::parse(""), None);
    }
}
