//! Voicemail messages: the metadata of each message left in a mailbox (the audio is a file
//! the `voicemail` role keeps under `voicemail.dir`; the row names it).
//!
//! A message is deposited once its audio is on disk; the row's commit is what makes the
//! deposit count (the role answers the caller's submit only after it).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::sqlite::{db_err, SqliteStore};
use crate::StoreError;

/// Whether the owner has listened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Not listened to yet (counts as "new" in message waiting).
    New,
    /// Listened to or saved (counts as "old").
    Saved,
}

impl MessageState {
    fn as_str(self) -> &'static str {
        match self {
            MessageState::New => "new",
            MessageState::Saved => "saved",
        }
    }

    fn from_db(s: &str) -> MessageState {
        if s == "new" {
            MessageState::New
        } else {
            MessageState::Saved
        }
    }
}

/// Who listened to a message, and when (group mailboxes record every member who did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    /// The agent's login id, else the number that called the access menu.
    pub by: String,
    pub at_ms: u64,
}

/// A message as deposited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub tenant: String,
    pub mailbox: String,
    /// Unique in the tenant; chosen by the depositor.
    pub id: String,
    /// The caller's number (ANI), if known.
    pub caller: Option<String>,
    /// The call's ConnID (16 hex digits), if known.
    pub conn_id: Option<String>,
    pub received_ms: u64,
    pub duration_ms: u64,
    /// The audio file, relative to the voicemail directory.
    pub file: String,
    /// The call's attached data.
    pub user_data: serde_json::Map<String, serde_json::Value>,
}

/// A stored message with what happened to it since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    #[serde(flatten)]
    pub message: NewMessage,
    pub state: MessageState,
    pub heard_by: Vec<Heard>,
}

/// New and old (saved) messages of a mailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub new: u32,
    pub saved: u32,
}

impl Counts {
    pub fn total(self) -> u32 {
        self.new + self.saved
    }

    /// The counts of a mailbox's messages already loaded.
    pub fn of(messages: &[StoredMessage]) -> Counts {
        let new = messages
            .iter()
            .filter(|m| m.state == MessageState::New)
            .count() as u32;
        Counts {
            new,
            saved: messages.len() as u32 - new,
        }
    }
}

/// The message part of the store (a supertrait of [`crate::Store`]). Blocking like the rest.
pub trait MessageStore {
    /// Stores `msg` unless its mailbox holds `max_messages` already
    /// ([`StoreError::Conflict`] with field `mailbox`); returns the counts after it.
    fn deposit_message(&self, msg: &NewMessage, max_messages: u32) -> Result<Counts, StoreError>;
    /// The messages of a mailbox, oldest first.
    fn messages(&self, tenant: &str, mailbox: &str) -> Result<Vec<StoredMessage>, StoreError>;
    /// One message of the tenant.
    fn message(&self, tenant: &str, id: &str) -> Result<Option<StoredMessage>, StoreError>;
    /// Sets a message's state, adding `heard` to who listened; `None` when there is no such
    /// message.
    fn mark_message(
        &self,
        tenant: &str,
        id: &str,
        state: MessageState,
        heard: Option<Heard>,
    ) -> Result<Option<StoredMessage>, StoreError>;
    /// Deletes a message; returns it (its file is the caller's to remove), `None` when there
    /// was none.
    fn delete_message(&self, tenant: &str, id: &str) -> Result<Option<StoredMessage>, StoreError>;
    /// Deletes the messages of a mailbox received before `before_ms` (retention); returns them.
    fn expire_messages(
        &self,
        tenant: &str,
        mailbox: &str,
        before_ms: u64,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// The counts of a mailbox.
    fn message_counts(&self, tenant: &str, mailbox: &str) -> Result<Counts, StoreError>;
}

const COLUMNS: &str = "tenant, mailbox, id, caller, conn_id, received_ms, duration_ms, file, \
                       user_data, state, heard_by";

fn from_row(r: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let user_data: String = r.get(8)?;
    let state: String = r.get(9)?;
    let heard_by: String = r.get(10)?;
    Ok(StoredMessage {
        message: NewMessage {
            tenant: r.get(0)?,
            mailbox: r.get(1)?,
            id: r.get(2)?,
            caller: r.get(3)?,
            conn_id: r.get(4)?,
            received_ms: r.get::<_, i64>(5)?.max(0) as u64,
            duration_ms: r.get::<_, i64>(6)?.max(0) as u64,
            file: r.get(7)?,
            // The role wrote these columns as JSON; a damaged value reads as empty rather
            // than hiding the message.
            user_data: serde_json::from_str(&user_data).unwrap_or_default(),
        },
        state: MessageState::from_db(&state),
        heard_by: serde_json::from_str(&heard_by).unwrap_or_default(),
    })
}

fn counts(conn: &Connection, tenant: &str, mailbox: &str) -> Result<Counts, StoreError> {
    conn.query_row(
        "SELECT COALESCE(SUM(state = 'new'), 0), COALESCE(SUM(state <> 'new'), 0) \
         FROM voicemail_messages WHERE tenant = ?1 AND mailbox = ?2",
        params![tenant, mailbox],
        |r| {
            Ok(Counts {
                new: r.get(0)?,
                saved: r.get(1)?,
            })
        },
    )
    .map_err(db_err)
}

fn select_one(
    conn: &Connection,
    tenant: &str,
    id: &str,
) -> Result<Option<StoredMessage>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM voicemail_messages WHERE tenant = ?1 AND id = ?2"),
        params![tenant, id],
        from_row,
    )
    .optional()
    .map_err(db_err)
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(e.to_string()))
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl MessageStore for SqliteStore {
    fn deposit_message(&self, msg: &NewMessage, max_messages: u32) -> Result<Counts, StoreError> {
        self.write(|tx| {
            if counts(tx, &msg.tenant, &msg.mailbox)?.total() >= max_messages {
                return Err(StoreError::Conflict {
                    field: "mailbox".into(),
                    message: format!("mailbox {} is full ({max_messages} messages)", msg.mailbox),
                });
            }
            tx.execute(
                &format!(
                    "INSERT INTO voicemail_messages ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'new', '[]')"
                ),
                params![
                    msg.tenant,
                    msg.mailbox,
                    msg.id,
                    msg.caller,
                    msg.conn_id,
                    ms(msg.received_ms),
                    ms(msg.duration_ms),
                    msg.file,
                    to_json(&msg.user_data)?,
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict {
                        field: "id".into(),
                        message: format!("message {} exists or the tenant does not", msg.id),
                    }
                }
                other => db_err(other),
            })?;
            counts(tx, &msg.tenant, &msg.mailbox)
        })
    }

    fn messages(&self, tenant: &str, mailbox: &str) -> Result<Vec<StoredMessage>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM voicemail_messages WHERE tenant = ?1 AND mailbox = ?2 \
                     ORDER BY received_ms, id"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![tenant, mailbox], from_row)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    fn message(&self, tenant: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
        self.read(|conn| select_one(conn, tenant, id))
    }

    fn mark_message(
        &self,
        tenant: &str,
        id: &str,
        state: MessageState,
        heard: Option<Heard>,
    ) -> Result<Option<StoredMessage>, StoreError> {
        self.write(|tx| {
            let Some(mut m) = select_one(tx, tenant, id)? else {
                return Ok(None);
            };
            m.state = state;
            if let Some(h) = heard {
                m.heard_by.push(h);
            }
            tx.execute(
                "UPDATE voicemail_messages SET state = ?3, heard_by = ?4 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, state.as_str(), to_json(&m.heard_by)?],
            )
            .map_err(db_err)?;
            Ok(Some(m))
        })
    }

    fn delete_message(&self, tenant: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
        self.write(|tx| {
            let found = select_one(tx, tenant, id)?;
            if found.is_some() {
                tx.execute(
                    "DELETE FROM voicemail_messages WHERE tenant = ?1 AND id = ?2",
                    params![tenant, id],
                )
                .map_err(db_err)?;
            }
            Ok(found)
        })
    }

    fn expire_messages(
        &self,
        tenant: &str,
        mailbox: &str,
        before_ms: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let old: Vec<StoredMessage> = self
            .messages(tenant, mailbox)?
            .into_iter()
            .filter(|m| m.message.received_ms < before_ms)
            .collect();
        let mut gone = Vec::with_capacity(old.len());
        for m in old {
            if let Some(d) = self.delete_message(tenant, &m.message.id)? {
                gone.push(d);
            }
        }
        Ok(gone)
    }

    fn message_counts(&self, tenant: &str, mailbox: &str) -> Result<Counts, StoreError> {
        self.read(|conn| counts(conn, tenant, mailbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, TenantInfo};

    fn store() -> SqliteStore {
        let s = SqliteStore::open_in_memory().unwrap();
        s.create_tenant(&TenantInfo::new("demo", "switchboard").unwrap())
            .unwrap();
        s
    }

    fn msg(id: &str, at: u64) -> NewMessage {
        NewMessage {
            tenant: "demo".into(),
            mailbox: "8100".into(),
            id: id.into(),
            caller: Some("+15551234567".into()),
            conn_id: None,
            received_ms: at,
            duration_ms: 3000,
            file: format!("demo/8100/{id}.wav"),
            user_data: serde_json::Map::new(),
        }
    }

    #[test]
    fn deposit_list_mark_delete() {
        let s = store();
        assert_eq!(
            s.deposit_message(&msg("b", 20), 10).unwrap(),
            Counts { new: 1, saved: 0 }
        );
        assert_eq!(s.deposit_message(&msg("a", 10), 10).unwrap().new, 2);
        let ids: Vec<_> = s
            .messages("demo", "8100")
            .unwrap()
            .into_iter()
            .map(|m| m.message.id)
            .collect();
        assert_eq!(ids, ["a", "b"], "oldest first");
        let heard = Heard {
            by: "a1001".into(),
            at_ms: 30,
        };
        let m = s
            .mark_message("demo", "a", MessageState::Saved, Some(heard.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.state, m.heard_by.clone()),
            (MessageState::Saved, vec![heard])
        );
        assert_eq!(s.message("demo", "a").unwrap(), Some(m));
        assert_eq!(
            s.message_counts("demo", "8100").unwrap(),
            Counts { new: 1, saved: 1 }
        );
        assert!(s
            .mark_message("demo", "zz", MessageState::Saved, None)
            .unwrap()
            .is_none());
        assert_eq!(
            s.delete_message("demo", "b").unwrap().map(|m| m.message.id),
            Some("b".into())
        );
        assert!(s.delete_message("demo", "b").unwrap().is_none());
        assert_eq!(
            s.message_counts("demo", "8100").unwrap(),
            Counts { new: 0, saved: 1 }
        );
    }

    #[test]
    fn a_full_mailbox_refuses_and_duplicates_conflict() {
        let s = store();
        s.deposit_message(&msg("a", 1), 2).unwrap();
        s.deposit_message(&msg("b", 2), 2).unwrap();
        let full = s.deposit_message(&msg("c", 3), 2).unwrap_err();
        assert!(
            matches!(full, StoreError::Conflict { ref field, .. } if field == "mailbox"),
            "{full:?}"
        );
        let dup = s.deposit_message(&msg("a", 4), 10).unwrap_err();
        assert!(
            matches!(dup, StoreError::Conflict { ref field, .. } if field == "id"),
            "{dup:?}"
        );
        let mut other = msg("x", 1);
        other.tenant = "nope".into();
        assert!(s.deposit_message(&other, 10).is_err(), "unknown tenant");
    }

    #[test]
    fn retention_and_tenant_deletion() {
        let s = store();
        s.deposit_message(&msg("old", 100), 10).unwrap();
        s.deposit_message(&msg("new", 900), 10).unwrap();
        let gone = s.expire_messages("demo", "8100", 500).unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].message.id, "old");
        s.delete_tenant("demo").unwrap();
        assert!(s.message("demo", "new").unwrap().is_none(), "cascade");
    }
}
