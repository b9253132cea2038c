//! A `304` to the cache's own validators merged into the stored response
//! (RFC 9111 §4.3.4), and when an answer supersedes what is stored.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{HeaderValue, AGE};
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{self, Entry, NotStorable, RequestDirectives, CACHE_STATUS};
use crate::cache::handle::{Counters, Shared};
use crate::cache::layer::Config;
use crate::cache::representation::stored::Wants;
use crate::cache::status::Fwd;
use crate::cache::validation;
use crate::etag::{not_modified_parts, Condition, Conditionals};

use super::{answer::from_entry, call::transient};

/// Whether a response that may not be stored says the resource is no longer
/// storable, so that it replaces the stored variant and the key is
/// remembered as uncacheable. Not when only this request forbade storing
/// (a request's `no-store` concerns that request alone, RFC 9111 §5.2.1.5;
/// `Authorization`, §3.5), nor for an answer to what this request asked
/// rather than a new representation: a range (206, 416) or a precondition
/// (304, 412; §3, §4.3.2). Nor a transient answer (408, 425, 429, 5xx; see
/// `transient`): the cache may forward it or act as if the origin did not
/// answer (§4.3.3), and one failure must not drop a good entry or stop
/// coalescing during an outage. RFC 9111 asks to purge only on §4.4.
pub(super) fn supersedes(reason: NotStorable, status: StatusCode) -> bool {
    matches!(reason, NotStorable::Response(_))
        && !matches!(status.as_u16(), 206 | 304 | 412 | 416)
        && !transient(status)
}

/// A 304 answered our validators: freshen the stored entry (RFC 9111
/// §4.3.4) and answer from it. The client always gets the merged response:
/// the stored one updated with every field of the 304 that §3.2 lets
/// through (a new `Cache-Control`, a `Set-Cookie`). When the merged
/// response may not be stored (`no-store`, `private`, `Set-Cookie`, ...)
/// the entry is dropped and the key remembered as uncacheable, as for a
/// full response saying so; a restriction of this request alone
/// (`no-store`, `Authorization`) leaves the entry as it was. Returns the
/// response and whether the entry was freshened.
#[allow(clippy::too_many_arguments)]
pub(super) fn revalidated<B: Body>(
    config: &Config,
    shared: &Arc<Shared>,
    (key, flight_key): (&str, &str),
    entry: &Arc<Entry>,
    not_modified: &HeaderMap,
    req_cc: &RequestDirectives,
    has_auth: bool,
    request_time: Instant,
    response_time: (Instant, SystemTime),
    fwd: Fwd,
    collapsed: Option<bool>,
    conditionals: Option<&Conditionals>,
    is_head: bool,
    wants: &Wants,
) -> (Response<ResponseBody<B>>, bool) {
    let now = response_time.0;
    // §4.3.4: a 304 that selects no stored response updates none. `fetch`
    // sent the request again where it could; where it could not (a body
    // type it cannot make empty), the client gets what the 304 vouched for
    // and the next request fetches anew.
    if !validation::selects(entry.etag(), not_modified) {
        shared.store.remove_variant(key, entry);
        let member = config.fwd_member(fwd, Some(304), false, collapsed);
        return (
            from_entry(entry, is_head, conditionals, wants, member, now),
            false,
        );
    }
    let mut merged = entry::merge_304(&entry.headers, not_modified);
    if entry.status_placeholder {
        merged.remove(CACHE_STATUS);
    }
    let policy = entry::storable(
        entry.status,
        &merged,
        req_cc,
        has_auth,
        &config.rules,
        request_time,
        response_time,
    );
    let member = |stored| config.fwd_member(fwd, Some(304), stored, collapsed);
    let policy = match policy {
        // The stored response may have been one to another user's
        // `Authorization` request, shared only because it said `public`,
        // `s-maxage` or `must-revalidate` (RFC 9111 §3.5); the entry does not
        // record whose request it was, so a 304 that takes that away drops
        // it (the next request fetches anew) rather than share it on.
        Ok(policy) if entry.auth_ok && !policy.auth_ok => {
            tracing::debug!(key, "revalidated response no longer shareable under §3.5");
            shared.store.remove_variant(key, entry);
            let response =
                merged_response(config, entry, merged, is_head, conditionals, member(false));
            return (response, false);
        }
        Ok(policy) => policy,
        Err(reason) => {
            tracing::debug!(key, ?reason, "revalidated response not stored");
            if matches!(reason, NotStorable::Response(_)) {
                shared.store.remove_variant(key, entry);
                shared.remember_uncacheable(flight_key, config.uncacheable_for);
            }
            let response =
                merged_response(config, entry, merged, is_head, conditionals, member(false));
            return (response, false);
        }
    };
    let mut fresh = entry::build(
        entry.status,
        entry.version,
        &merged,
        entry.body.clone(),
        policy,
        &HeaderMap::new(),
        entry.extra.clone(),
        config.strip_field.as_ref(),
    );
    // The variant stays the one it was.
    fresh.vary = entry.vary.clone();
    // The codings made of the body stay too, their headers updated as the
    // entry's were: those the entry had, or those a compression job stored
    // while this validation was in flight (else the freshened entry would
    // put back one without them, and a page revalidated on every request
    // might never keep its codings).
    let coded = match &entry.reprs {
        Some(_) => None,
        None => shared.store.coded_with_body(key, &entry.body),
    };
    if let Some(reprs) = entry
        .reprs
        .as_ref()
        .or(coded.as_ref().and_then(|e| e.reprs.as_ref()))
    {
        let reprs = reprs.rebase(&fresh.headers);
        fresh.weight = fresh.weight.saturating_add(reprs.weight());
        fresh.reprs = Some(Arc::new(reprs));
    }
    let fresh = Arc::new(fresh);
    if !shared.store.insert(key, Arc::clone(&fresh)) {
        // The merged headers made it too heavy for the tier.
        shared.store.remove_variant(key, entry);
        return (
            from_entry(&fresh, is_head, conditionals, wants, member(false), now),
            false,
        );
    }
    shared.stored_l2(key, &fresh, None);
    // Still none (the job had not run, or lost its entry to this one in
    // the window since the lookup above): the job is queued again; one
    // that finds the codings made meanwhile does nothing.
    #[cfg(feature = "compression")]
    if fresh.reprs.is_none() {
        if let Some(c) = config.compressor() {
            c.queue(shared, key, &fresh);
        }
    }
    Counters::bump(&shared.counters.revalidations);
    shared.count_store();
    tracing::debug!(key, "stored response revalidated");
    (
        from_entry(&fresh, is_head, conditionals, wants, member(true), now),
        true,
    )
}

/// The stored response updated by a 304 that may not be stored, for the
/// client that asked (RFC 9111 §4.3.4): its headers are the merged ones, so
/// the 304's `Cache-Control` and `Set-Cookie` reach this client and no one
/// else. `Age` is the 304's own (a just-validated response).
pub(super) fn merged_response<B: Body>(
    config: &Config,
    entry: &Entry,
    mut merged: HeaderMap,
    is_head: bool,
    conditionals: Option<&Conditionals>,
    member: HeaderValue,
) -> Response<ResponseBody<B>> {
    if let Some(field) = &config.strip_field {
        merged.remove(field);
    }
    if !merged.contains_key(AGE) {
        merged.insert(AGE, HeaderValue::from_static("0"));
    }
    let mut head = Response::new(()).into_parts().0;
    head.status = entry.status;
    head.version = entry.version;
    head.headers = merged;
    if conditionals
        .is_some_and(|c| c.evaluate(head.status, &head.headers) == Condition::NotModified)
    {
        let mut parts = not_modified_parts(head);
        parts.headers.append(CACHE_STATUS, member);
        return Response::from_parts(parts, ResponseBody::empty());
    }
    head.headers.append(CACHE_STATUS, member);
    let body = if is_head {
        ResponseBody::empty()
    } else {
        ResponseBody::stored(entry.body.clone())
    };
    Response::from_parts(head, body)
}
