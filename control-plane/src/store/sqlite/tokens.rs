//! Tokens' metadata, bootstrap and viewer (the secret token itself is never stored).

use rusqlite::{Connection, Transaction, params};

use super::{all, one};
use crate::store::rows::{self, TOKEN_COLS};
use crate::store::rules::no_token;
use crate::store::{StoreError, TokenRecord};

pub(super) fn create(tx: &Transaction<'_>, token: &TokenRecord) -> Result<(), StoreError> {
    tx.execute(
        &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            token.id,
            token.kind.to_i64(),
            token.name,
            token.created_at,
            token.expires_at,
            token.revoked_at
        ],
    )?;
    Ok(())
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<TokenRecord, StoreError> {
    one(
        conn,
        &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
        [id],
        rows::token,
    )?
    .ok_or_else(|| no_token(id))
}

pub(super) fn list(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    all(
        conn,
        &format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at, id"),
        [],
        rows::token,
    )
}

/// Revokes the token (a token already revoked keeps its first revocation time).
pub(super) fn revoke(tx: &Transaction<'_>, id: &str, now: i64) -> Result<TokenRecord, StoreError> {
    tx.execute(
        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at = 0",
        params![now, id],
    )?;
    get(tx, id)
}
