//! The miss path: one request per key leads (the others wait for what it
//! stores, or go on their own after the lock timeout); the leader fetches
//! (see `fetch`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::cache::body::ResponseBody;
use crate::cache::entry::{reuse, Reuse};
#[cfg(feature = "redis")]
use crate::cache::flight::Lead;
use crate::cache::flight::{Join, Outcome};
use crate::cache::handle::Counters;
use crate::cache::observe::{forwarded, seen};
use crate::cache::outcome::CacheOutcome::{Coalesced, Hit, Miss, Stale};
use crate::cache::status::Fwd;

#[cfg(feature = "redis")]
use super::answer::l2_hit;
use super::{
    answer::cut,
    call::{Job, Lookup},
    fetch::fetch,
    passthrough::pass,
    refresh::lead_fetch,
};

/// The miss path: coalesce with other requests for the key, or lead; then,
/// for a GET with `Range`, the range is cut from the whole response (the
/// leader's, a stored one, or one passed through), as nginx's
/// `proxy_cache` does: a leader and a waiter with and without `Range`
/// share one origin call, and each gets its own answer.
pub(super) async fn miss<S, ReqBody, B>(
    inner: S,
    mut job: Job<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    let range = job.range.take();
    let response = coalesce(inner, job).await?;
    Ok(match &range {
        Some(range) => cut(response, range),
        None => response,
    })
}

/// Joins the flight for the key, or leads it.
pub(super) async fn coalesce<S, ReqBody, B>(
    mut inner: S,
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))] mut job: Job<ReqBody>,
) -> Result<Response<ResponseBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    // Requests that cannot share a response go alone: another user's
    // credentials, or no-store.
    if job.has_auth || job.req_cc.no_store {
        return fetch(&mut inner, job, None, None).await;
    }
    let mut collapsed = None;
    let mut retried = false;
    loop {
        let joined = job.shared.flights.join(&job.flight_key);
        match joined {
            #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
            Join::Lead(mut lead) => {
                // A flight may have stored the response between our lookup
                // and now.
                if let Some(response) = stored_meanwhile(&job) {
                    lead.finish(Outcome::Stored);
                    return Ok(response);
                }
                // Then the shared tier: another instance may have rendered
                // it (or be rendering it, with the render lock on), also
                // when a stale copy is at hand (a revalidation marks the
                // copies of every instance at once).
                #[cfg(feature = "redis")]
                {
                    lead = match from_shared_tier(&mut job, lead).await {
                        Ok(response) => return Ok(response),
                        Err(lead) => lead,
                    };
                }
                return lead_fetch(inner, job, lead, collapsed).await;
            }
            Join::Wait(wait) => {
                Counters::bump(&job.shared.counters.coalesced);
                tracing::debug!(key = %job.key, "waiting for a request in flight");
                let waited_from = crate::date::monotonic_now();
                match wait.limit(Some(job.config.lock_timeout)).await {
                    Outcome::Stored => {
                        return match stored_for_waiter(&job, waited_from) {
                            Some(response) => Ok(response),
                            None => fetch(&mut inner, job, None, Some(false)).await,
                        };
                    }
                    Outcome::NotStorable => return fetch(&mut inner, job, None, Some(false)).await,
                    Outcome::Failed => {
                        if let Some(response) = stale_on_failure(&job) {
                            return Ok(response);
                        }
                        // One waiter takes over and the others wait for it
                        // (collapsing, RFC 9111 §4), once: a transient
                        // failure is retried by one call, not by every
                        // waiter at once, and no waiter waits more than one
                        // further round.
                        if retried {
                            return fetch(&mut inner, job, None, Some(false)).await;
                        }
                        retried = true;
                        collapsed = Some(false);
                    }
                    // The leader's client hung up: take over.
                    Outcome::Abandoned => collapsed = Some(false),
                    // The leader stalls: go alone, and store nothing, so
                    // that every waiter timing out does not store the page
                    // once more (the leader may still store it).
                    Outcome::TimedOut => {
                        tracing::debug!(key = %job.key, "lock timeout: forwarding alone");
                        let member = job.config.fwd_member(job.fwd, None, false, Some(false));
                        let config = Arc::clone(&job.config);
                        let req = Request::from_parts(job.parts, job.body);
                        return forwarded(config, Miss, pass(inner, req, member)).await;
                    }
                }
            }
        }
    }
}

/// The response a flight stored between this request's lookup and its
/// leading one, when fresh: answered as `hit` would, from what the job
/// read of the request (its `Range` is taken off already).
fn stored_meanwhile<ReqBody, B: Body>(job: &Job<ReqBody>) -> Option<Response<ResponseBody<B>>> {
    if job.stale.is_some() {
        return None;
    }
    let now = crate::date::monotonic_now();
    let Lookup::Found(variants, i) = job.look_up(now) else {
        return None;
    };
    let entry = &variants.list[i];
    if !matches!(reuse(&entry.fresh, &job.req_cc, now), Reuse::Fresh) {
        return None;
    }
    let member = job.config.hit_member(entry.fresh.ttl(now));
    let response = job.answer(entry, member, now);
    Some(seen(&job.config, response, Hit, None))
}

/// The shared tier's answer for a leader: a usable entry is stored in
/// memory (its codings queued) and served, the flight finished; one that
/// is not usable as is becomes the stale entry to validate (ours is kept
/// when we have one). `Err(lead)` when the leader is to fetch.
#[cfg(feature = "redis")]
async fn from_shared_tier<ReqBody, B: Body>(
    job: &mut Job<ReqBody>,
    mut lead: Lead,
) -> Result<Response<ResponseBody<B>>, Lead> {
    let Some(tier) = job.shared.l2.clone() else {
        return Err(lead);
    };
    let found = tier
        .before_render(&job.shared, job.wanted(), &mut lead)
        .await;
    // Another instance may store longer bodies than this one: such an
    // entry is not ours to keep (nor to validate and keep), so the page is
    // fetched as if Redis had none, and found too long to store.
    let found = found.filter(|(entry, _)| entry.body.len() <= job.config.max_body);
    match found {
        Some((entry, Reuse::Fresh | Reuse::StaleAccepted)) => {
            if job.shared.store.insert(&job.key, Arc::clone(&entry)) {
                #[cfg(feature = "compression")]
                if let Some(c) = job.config.compressor() {
                    c.queue(&job.shared, &job.key, &entry);
                }
                lead.finish(Outcome::Stored);
            } else {
                // Too heavy for memory: waiters would find nothing; let
                // them go, and later requests too.
                job.shared
                    .remember_uncacheable(&job.flight_key, job.config.uncacheable_for);
                lead.finish(Outcome::NotStorable);
            }
            let now = crate::date::monotonic_now();
            let response = l2_hit(job, &entry, now);
            Ok(seen(&job.config, response, Hit, None))
        }
        Some((entry, how)) if job.stale.is_none() => {
            job.fwd = if how == Reuse::ForwardRequest {
                Fwd::Request
            } else {
                Fwd::Stale
            };
            job.stale = Some(entry);
            Err(lead)
        }
        _ => Err(lead),
    }
}

/// What a waiter gets once its leader stored a response: that response,
/// when it is the variant this request selects. The flight covers the
/// whole URI, so the leader may have stored another variant and left ours
/// as it was. A waiter only gets a response the leader stored
/// (RFC-CHECKLIST §4, collapsing), never the stale one it came with:
/// unvalidated, that would break §4.2.4 and must-revalidate (§5.2.2.2).
/// `None`: the waiter fetches on its own.
fn stored_for_waiter<ReqBody, B: Body>(
    job: &Job<ReqBody>,
    waited_from: Instant,
) -> Option<Response<ResponseBody<B>>> {
    let now = crate::date::monotonic_now();
    let Lookup::Found(variants, i) = job.look_up(now) else {
        return None;
    };
    let entry = &variants.list[i];
    variants.touch(i);
    let usable = !job.stale.as_ref().is_some_and(|s| Arc::ptr_eq(s, entry))
        && (entry.fresh.stored_at >= waited_from
            || reuse(&entry.fresh, &job.req_cc, now) == Reuse::Fresh);
    if !usable {
        return None;
    }
    // Just fetched or validated for the leader, so good for this request
    // too, whatever it asked.
    let member = job.config.fwd_member(job.fwd, None, true, Some(true));
    let response = job.answer(entry, member, now);
    Some(seen(&job.config, response, Coalesced, None))
}

/// A waiter whose leader failed: its stale entry where `stale-if-error`
/// allows (RFC 5861 §4).
fn stale_on_failure<ReqBody, B: Body>(job: &Job<ReqBody>) -> Option<Response<ResponseBody<B>>> {
    let now = crate::date::monotonic_now();
    let entry = job
        .stale
        .as_ref()
        .filter(|e| e.fresh.sie_allows(now, job.req_cc.stale_if_error))?;
    Counters::bump(&job.shared.counters.stale);
    let member = job.config.fwd_member(Fwd::Stale, None, false, Some(true));
    let response = job.answer(entry, member, now);
    Some(seen(&job.config, response, Stale, None))
}
