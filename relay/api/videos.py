"""``/v1/videos``: asynchronous video generation jobs (OpenAI's video API shape).

``POST /v1/videos`` prices the job exactly (per second, ``relay.money.estimate.quote_video``),
admits it like any request, creates it upstream and answers at once with the job
(``status`` queued, ``metadata.cost_estimate_micros``). The job then holds its quote in
the wallet until ``relay.jobs.video.VideoPoller`` sees it finish upstream and settles
it once. ``GET /v1/videos/{id}`` shows a job to its own account only (anyone else gets
404); once completed it carries ``metadata.cost_micros`` and ``content_url``, and
``GET /v1/videos/{id}/content`` streams the video through from the upstream.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.api.flow import (
    abandon,
    dry_run_answer,
    is_dry_run,
    model_for,
    refuse,
    upstream_broke_off,
)
from relay.errors import InvalidRequest, NotFound, NoUpstreamAvailable, RelayError, UpstreamError
from relay.http.multipart import is_multipart, parse_form
from relay.http.responses import decode_or_400, error_response, json_response, read_body
from relay.identity.auth import ANONYMOUS, Principal
from relay.jobs.video import UNFINISHED, VideoJob, VideoPoller, decode_upstream_video
from relay.money.estimate import quote_video
from relay.money.pricing import micros_to_usd
from relay.state import RelayState, relay_state
from relay.upstream.client import UpstreamFailure, UpstreamResponse
from relay.upstream.providers import Provider
from relay.upstream.providers.base import VIDEOS_PATH
from relay.upstream.routing import OpenedRoute, Route

__all__ = ["VideoRequest", "create_video", "show_video", "video_content", "video_poller"]

DEFAULT_SECONDS = "4"


class VideoRequest(msgspec.Struct):
    model: str
    prompt: str
    seconds: int | str = DEFAULT_SECONDS
    size: str | None = None


_decode_request = msgspec.json.Decoder(VideoRequest).decode


def video_poller(state: RelayState) -> VideoPoller:
    """The app's poller (``RelayState.videos``); 503 when the app runs without one."""
    poller = getattr(state, "videos", None)
    if not isinstance(poller, VideoPoller):
        raise NoUpstreamAvailable("video jobs are not enabled on this relay", code="no_video_jobs")
    return poller


def _seconds(value: int | str, allowed: list[int]) -> int:
    """Whole seconds from the model's ``video_seconds`` (``4`` or ``"4"``), else 400.

    Never a fraction: a hold of "0.0000001" seconds would cost nothing while the upstream
    renders (and bills) a whole clip.
    """
    text = str(value)
    seconds = int(text) if not isinstance(value, bool) and text.isdigit() and len(text) < 6 else 0
    if seconds not in allowed:
        choices = ", ".join(str(choice) for choice in allowed)
        raise InvalidRequest(f"seconds must be one of {choices}", param="seconds")
    return seconds


async def create_video(request: Request) -> Response:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), "videos", ANONYMOUS)
    ticket: Ticket | None = None
    try:
        exchange.principal = await state.auth.authenticate(request.headers)
        poller = video_poller(state)
        body = await read_body(request, state.config.server.max_body_bytes)
        content_type = request.headers.get("content-type")
        if is_multipart(content_type):
            body = _form_as_json(body, content_type or "")
        video: VideoRequest = decode_or_400(_decode_request, body)
        model = model_for(state, exchange, video.model, "video")
        seconds = _seconds(video.seconds, model.config.video_seconds)
        multiplier = state.gate.multiplier(exchange.principal)
        try:
            quote = quote_video(model.price, seconds=seconds, multiplier=multiplier)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="model") from None
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)
        payload: dict[str, Any] = msgspec.json.decode(body)
        payload["seconds"] = str(seconds)

        def body_for(route: Route) -> bytes:
            return route.provider.video_body(payload, route.upstream_model)

        ticket = (
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # handed to the job below, or released on any way out
            opened = await state.router.open_route(model, VIDEOS_PATH, body_for, stream=False)
            exchange.route = opened.route
            upstream_id = await _created_upstream_id(
                opened, state.config.server.max_upstream_body_bytes
            )
            job = _new_job(
                exchange,
                opened.route,
                upstream_id,
                seconds,
                video.size,
                quote.worst_case_micros,
                multiplier,
            )
            # The request's hold becomes the job's (it outlives the request): from here on
            # it is the poller's store to settle once; the ticket is finished.
            await poller.hand_over(job, ticket)
    except RelayError as exc:
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise
    return json_response(job_view(job, request, exchange.request_id), headers=exchange.headers())


def _new_job(
    exchange: Exchange,
    route: Route,
    upstream_id: str,
    seconds: int,
    size: str | None,
    estimate_micros: int,
    multiplier: Decimal,
) -> VideoJob:
    assert exchange.model is not None
    return VideoJob(
        id="video_" + secrets.token_hex(12),
        account_id=exchange.principal.account_id,
        key_id=exchange.principal.key_id,
        model=exchange.model.name,
        provider=route.provider.name,
        upstream_model=route.upstream_model,
        upstream_id=upstream_id,
        seconds=str(seconds),
        size=size,
        estimate_micros=estimate_micros,
        usd_per_second=str(exchange.model.price.usd_per_video_second),
        price_multiplier=str(multiplier),
        created_at_ms=time.time_ns() // 1_000_000,
    )


def _form_as_json(body: bytes, content_type: str) -> bytes:
    """``videos.create`` as the OpenAI SDK sends it (multipart) → the JSON form relay reads.

    An uploaded ``input_reference`` would have to be stored and forwarded as a file, which
    relay does not do: it is refused by name rather than dropped."""
    form = parse_form(body, content_type)
    if form.files:
        raise InvalidRequest(
            f"file uploads ({', '.join(form.files)}) are not supported on /v1/videos",
            param=form.files[0],
        )
    return msgspec.json.encode(form.text)


async def _created_upstream_id(opened: OpenedRoute, max_bytes: int) -> str:
    try:
        raw = await opened.response.read(max_bytes)
    except UpstreamFailure as exc:
        raise upstream_broke_off(exc, "video job") from None
    finally:
        await opened.close()
    try:
        upstream_id = decode_upstream_video(raw).id
    except msgspec.DecodeError:
        upstream_id = None
    # The id goes into the URLs relay polls and into the usage row: only a safe one.
    upstream_id = opened.route.provider.pool.redactor.safe_id(upstream_id)
    if not upstream_id:
        raise UpstreamError("upstream answered without a usable video job id")
    return upstream_id


def job_view(job: VideoJob, request: Request, request_id: str) -> dict[str, Any]:
    """A job as the client sees it: OpenAI's video object plus relay's metadata.

    Every metadata value is a string (``Video.metadata`` is ``Dict[str, str]`` in the SDK):
    ``cost_estimate`` (USD) while the job runs, ``cost`` once it ended, each with its
    ``_micros`` form."""
    done = job.status == "completed"
    metadata: dict[str, str] = {
        "request_id": request_id,
        "cost_estimate": micros_to_usd(job.estimate_micros),
        "cost_estimate_micros": str(job.estimate_micros),
        "provider": job.provider,
        "provider_name": job.provider,
        "executed_model": job.upstream_model,
        "upstream_id": job.upstream_id,
    }
    if job.status not in UNFINISHED:
        cost = job.cost_micros or 0
        metadata.update(cost_micros=str(cost), cost=micros_to_usd(cost))
    view: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": job.status,
        "progress": 100 if done else job.progress,
        "created_at": job.created_at_ms // 1000,
        "completed_at": job.completed_at_ms // 1000 if job.completed_at_ms else None,
        "seconds": job.seconds,
        "size": job.size,
        "error": {"code": job.error_code} if job.status == "failed" else None,
        "metadata": metadata,
    }
    if done:
        view["content_url"] = str(request.url_for("video_content", video_id=job.id))
    return view


async def _owned_job(state: RelayState, principal: Principal, video_id: str) -> VideoJob:
    job = await video_poller(state).find(video_id)
    # Someone else's job answers exactly like a missing one: ids reveal nothing.
    if job is None or job.account_id != principal.account_id:
        raise NotFound(f"No video job {video_id!r}", code="video_not_found")
    return job


async def show_video(request: Request) -> Response:
    state = relay_state(request)
    request_id = state.new_request_id()
    headers = {"x-relay-request-id": request_id}
    try:
        principal = await state.auth.authenticate(request.headers)
        job = await _owned_job(state, principal, request.path_params["video_id"])
    except RelayError as exc:
        return error_response(exc, headers)
    headers["x-relay-cost-micros"] = str(job.cost_micros or 0)
    return json_response(job_view(job, request, request_id), headers=headers)


async def video_content(request: Request) -> Response:
    state = relay_state(request)
    try:
        principal = await state.auth.authenticate(request.headers)
        job = await _owned_job(state, principal, request.path_params["video_id"])
        if job.status != "completed":
            raise InvalidRequest(f"video job {job.id!r} is {job.status}", code="video_not_ready")
        provider = state.providers.get(job.provider)
        if provider is None:
            raise NoUpstreamAvailable(f"provider {job.provider!r} is no longer configured")
        response, release_key = await _open_content(provider, job.upstream_id)
    except RelayError as exc:
        return error_response(exc)
    media_type = response.headers.get("content-type", "video/mp4")
    return StreamingResponse(_pass_through(response, release_key), media_type=media_type)


async def _open_content(
    provider: Provider, upstream_id: str
) -> tuple[UpstreamResponse, Callable[[], None]]:
    key = provider.pool.acquire()
    if key is None:
        raise NoUpstreamAvailable(f"provider {provider.name!r} has no usable key")
    try:
        response = await provider.client.send(
            "GET",
            provider.url(f"/videos/{upstream_id}/content"),
            headers=provider.headers(key),
            body=None,
            timeouts=provider.timeouts,
        )
    except UpstreamFailure:
        provider.pool.release(key)
        raise UpstreamError(f"provider {provider.name!r} could not be reached") from None
    except BaseException:
        provider.pool.release(key)
        raise
    if response.status >= 400:
        await response.aclose()
        provider.pool.release(key)
        raise UpstreamError(f"provider {provider.name!r} answered HTTP {response.status}")
    return response, lambda: provider.pool.release(key)


async def _pass_through(
    response: UpstreamResponse, release_key: Callable[[], None]
) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.chunks():
            yield chunk
    finally:
        await response.aclose()
        release_key()
