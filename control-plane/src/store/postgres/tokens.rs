//! Tokens' metadata, bootstrap and viewer (the secret itself is never stored). Each call is
//! one statement: none bumps the revision.

use deadpool_postgres::GenericClient;

use super::{all, exec, one};
use crate::store::rows::{self, TOKEN_COLS};
use crate::store::rules::no_token;
use crate::store::{StoreError, TokenRecord};

pub(super) async fn create(c: &impl GenericClient, token: &TokenRecord) -> Result<(), StoreError> {
    exec(
        c,
        &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
        &[
            &token.id,
            &token.kind.to_i64(),
            &token.name,
            &token.created_at,
            &token.expires_at,
            &token.revoked_at,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn get(c: &impl GenericClient, id: &str) -> Result<TokenRecord, StoreError> {
    one(
        c,
        &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1"),
        &[&id],
        rows::token,
    )
    .await?
    .ok_or_else(|| no_token(id))
}

pub(super) async fn list(c: &impl GenericClient) -> Result<Vec<TokenRecord>, StoreError> {
    all(
        c,
        &format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at, id COLLATE \"C\""),
        &[],
        rows::token,
    )
    .await
}

/// Revokes the token (a token already revoked keeps its first revocation time).
pub(super) async fn revoke(
    c: &impl GenericClient,
    id: &str,
    now: i64,
) -> Result<TokenRecord, StoreError> {
    exec(
        c,
        "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at = 0",
        &[&now, &id],
    )
    .await?;
    get(c, id).await
}
