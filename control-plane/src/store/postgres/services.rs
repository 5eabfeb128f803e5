//! Services and gateway routes.

use deadpool_postgres::GenericClient;
use weft_proto::v1::{Protocol, Route, Service};

use super::state::{add_tombstone, bump, clear_tombstone};
use super::{all, exec, one};
use crate::store::StoreError;
use crate::store::model::{TombstoneKind, route_key};
use crate::store::rows::{self, ROUTE_COLS, SERVICE_COLS};
use crate::store::rules::{self, service_not_found};

async fn find(c: &impl GenericClient, name: &str) -> Result<Option<Service>, StoreError> {
    one(
        c,
        &format!("SELECT {SERVICE_COLS} FROM services WHERE name = $1"),
        &[&name],
        rows::service,
    )
    .await
}

/// Whether the service exists.
pub(super) async fn exists(c: &impl GenericClient, name: &str) -> Result<bool, StoreError> {
    Ok(find(c, name).await?.is_some())
}

pub(super) async fn get(c: &impl GenericClient, name: &str) -> Result<Service, StoreError> {
    find(c, name).await?.ok_or_else(|| service_not_found(name))
}

pub(super) async fn list(c: &impl GenericClient) -> Result<Vec<Service>, StoreError> {
    all(
        c,
        &format!("SELECT {SERVICE_COLS} FROM services ORDER BY name COLLATE \"C\""),
        &[],
        rows::service,
    )
    .await
}

pub(super) async fn create(
    tx: &impl GenericClient,
    name: &str,
    protocol: Protocol,
    port: u32,
    now: i64,
) -> Result<Service, StoreError> {
    let port_owner = if port == 0 {
        None
    } else {
        one(
            tx,
            "SELECT name FROM services WHERE port = $1",
            &[&i64::from(port)],
            |r| r.text(0),
        )
        .await?
    };
    rules::check_new_service(name, find(tx, name).await?.is_some(), port, port_owner)?;
    let rev = bump(tx).await?;
    exec(
        tx,
        "INSERT INTO services (name, protocol, port, revision, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            &name,
            &(protocol as i64),
            &(port != 0).then_some(i64::from(port)),
            &(rev as i64),
            &now,
        ],
    )
    .await?;
    clear_tombstone(tx, TombstoneKind::Service, name).await?;
    get(tx, name).await
}

pub(super) async fn set_protocol(
    tx: &impl GenericClient,
    name: &str,
    protocol: Protocol,
) -> Result<Service, StoreError> {
    let current = get(tx, name).await?;
    if current.protocol == protocol as i32 {
        return Ok(current);
    }
    let rev = bump(tx).await?;
    exec(
        tx,
        "UPDATE services SET protocol = $1, revision = $2 WHERE name = $3",
        &[&(protocol as i64), &(rev as i64), &name],
    )
    .await?;
    get(tx, name).await
}

pub(super) async fn delete(tx: &impl GenericClient, name: &str) -> Result<u64, StoreError> {
    get(tx, name).await?;
    let routes = all(
        tx,
        "SELECT host || path_prefix FROM routes WHERE service = $1 ORDER BY host COLLATE \"C\"",
        &[&name],
        |r| r.text(0),
    )
    .await?;
    rules::check_service_unrouted(name, &routes)?;
    let permissions = all(
        tx,
        "SELECT id FROM permissions WHERE source = $1 OR destination = $1 ORDER BY id COLLATE \"C\"",
        &[&name],
        |r| r.text(0),
    )
    .await?;
    rules::check_service_unreferenced(name, &permissions)?;
    let rev = bump(tx).await?;
    exec(tx, "DELETE FROM services WHERE name = $1", &[&name]).await?;
    add_tombstone(tx, TombstoneKind::Service, name, rev).await?;
    Ok(rev)
}

pub(super) async fn create_route(
    tx: &impl GenericClient,
    route: Route,
) -> Result<Route, StoreError> {
    let taken_by = one(
        tx,
        "SELECT service FROM routes WHERE host = $1 AND path_prefix = $2",
        &[&route.host, &route.path_prefix],
        |r| r.text(0),
    )
    .await?;
    let target_exists = find(tx, &route.service).await?.is_some();
    rules::check_new_route(&route, target_exists, taken_by)?;
    let rev = bump(tx).await?;
    exec(
        tx,
        "INSERT INTO routes (host, path_prefix, service, rewrite_host, revision, prefer_region) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &route.host,
            &route.path_prefix,
            &route.service,
            &route.rewrite_host,
            &(rev as i64),
            &route.prefer_region,
        ],
    )
    .await?;
    clear_tombstone(
        tx,
        TombstoneKind::Route,
        &route_key(&route.host, &route.path_prefix),
    )
    .await?;
    Ok(Route {
        revision: rev,
        ..route
    })
}

pub(super) async fn list_routes(c: &impl GenericClient) -> Result<Vec<Route>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {ROUTE_COLS} FROM routes ORDER BY host COLLATE \"C\", path_prefix COLLATE \"C\""
        ),
        &[],
        rows::route,
    )
    .await
}

pub(super) async fn delete_route(
    tx: &impl GenericClient,
    host: &str,
    path_prefix: &str,
) -> Result<u64, StoreError> {
    let n = exec(
        tx,
        "DELETE FROM routes WHERE host = $1 AND path_prefix = $2",
        &[&host, &path_prefix],
    )
    .await?;
    if n == 0 {
        return Err(rules::no_route(host, path_prefix));
    }
    let rev = bump(tx).await?;
    add_tombstone(tx, TombstoneKind::Route, &route_key(host, path_prefix), rev).await?;
    Ok(rev)
}
