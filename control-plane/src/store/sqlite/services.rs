//! Services and gateway routes.

use rusqlite::{Connection, Transaction, params};
use weft_proto::v1::{Protocol, Route, Service};

use super::state::{add_tombstone, bump, clear_tombstone};
use super::{all, one};
use crate::store::StoreError;
use crate::store::model::{TombstoneKind, route_key};
use crate::store::rows::{self, ROUTE_COLS, SERVICE_COLS};
use crate::store::rules::{self, service_not_found};

fn find(conn: &Connection, name: &str) -> Result<Option<Service>, StoreError> {
    one(
        conn,
        &format!("SELECT {SERVICE_COLS} FROM services WHERE name = ?1"),
        [name],
        rows::service,
    )
}

/// Whether the service exists.
pub(super) fn exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(find(conn, name)?.is_some())
}

pub(super) fn get(conn: &Connection, name: &str) -> Result<Service, StoreError> {
    find(conn, name)?.ok_or_else(|| service_not_found(name))
}

pub(super) fn list(conn: &Connection) -> Result<Vec<Service>, StoreError> {
    all(
        conn,
        &format!("SELECT {SERVICE_COLS} FROM services ORDER BY name"),
        [],
        rows::service,
    )
}

pub(super) fn create(
    tx: &Transaction<'_>,
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
            "SELECT name FROM services WHERE port = ?1",
            [port as i64],
            |r| r.text(0),
        )?
    };
    rules::check_new_service(name, find(tx, name)?.is_some(), port, port_owner)?;
    let rev = bump(tx)?;
    tx.execute(
        "INSERT INTO services (name, protocol, port, revision, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            name,
            protocol as i32,
            if port == 0 { None } else { Some(port as i64) },
            rev as i64,
            now
        ],
    )?;
    clear_tombstone(tx, TombstoneKind::Service, name)?;
    get(tx, name)
}

pub(super) fn set_protocol(
    tx: &Transaction<'_>,
    name: &str,
    protocol: Protocol,
) -> Result<Service, StoreError> {
    let current = get(tx, name)?;
    if current.protocol == protocol as i32 {
        return Ok(current);
    }
    let rev = bump(tx)?;
    tx.execute(
        "UPDATE services SET protocol = ?1, revision = ?2 WHERE name = ?3",
        params![protocol as i32, rev as i64, name],
    )?;
    get(tx, name)
}

pub(super) fn delete(tx: &Transaction<'_>, name: &str) -> Result<u64, StoreError> {
    get(tx, name)?;
    let routes = all(
        tx,
        "SELECT host || path_prefix FROM routes WHERE service = ?1 ORDER BY host",
        [name],
        |r| r.text(0),
    )?;
    rules::check_service_unrouted(name, &routes)?;
    let permissions = all(
        tx,
        "SELECT id FROM permissions WHERE source = ?1 OR destination = ?1 ORDER BY id",
        [name],
        |r| r.text(0),
    )?;
    rules::check_service_unreferenced(name, &permissions)?;
    let rev = bump(tx)?;
    tx.execute("DELETE FROM services WHERE name = ?1", [name])?;
    add_tombstone(tx, TombstoneKind::Service, name, rev)?;
    Ok(rev)
}

pub(super) fn create_route(tx: &Transaction<'_>, route: Route) -> Result<Route, StoreError> {
    let taken_by = one(
        tx,
        "SELECT service FROM routes WHERE host = ?1 AND path_prefix = ?2",
        params![route.host, route.path_prefix],
        |r| r.text(0),
    )?;
    rules::check_new_route(&route, find(tx, &route.service)?.is_some(), taken_by)?;
    let rev = bump(tx)?;
    tx.execute(
        "INSERT INTO routes (host, path_prefix, service, rewrite_host, revision, prefer_region) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![route.host, route.path_prefix, route.service, route.rewrite_host, rev as i64, route.prefer_region],
    )?;
    clear_tombstone(
        tx,
        TombstoneKind::Route,
        &route_key(&route.host, &route.path_prefix),
    )?;
    Ok(Route {
        revision: rev,
        ..route
    })
}

pub(super) fn list_routes(conn: &Connection) -> Result<Vec<Route>, StoreError> {
    all(
        conn,
        &format!("SELECT {ROUTE_COLS} FROM routes ORDER BY host, path_prefix"),
        [],
        rows::route,
    )
}

pub(super) fn delete_route(
    tx: &Transaction<'_>,
    host: &str,
    path_prefix: &str,
) -> Result<u64, StoreError> {
    let n = tx.execute(
        "DELETE FROM routes WHERE host = ?1 AND path_prefix = ?2",
        params![host, path_prefix],
    )?;
    if n == 0 {
        return Err(rules::no_route(host, path_prefix));
    }
    let rev = bump(tx)?;
    add_tombstone(tx, TombstoneKind::Route, &route_key(host, path_prefix), rev)?;
    Ok(rev)
}
