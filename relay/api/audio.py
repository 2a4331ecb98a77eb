"""``/v1/audio/*``: transcription and translation (speech → text), speech (text → audio).

Transcriptions and translations take OpenAI's multipart form and are passed through to
OpenAI-dialect upstreams. The hold comes from the upload's duration
(``relay.money.audio_estimate``: exact for WAV, else from its size, capped by
``[server] max_audio_seconds``); settlement from what the upstream reports
(``relay.upstream.wire_audio``): seconds at ``usd_per_audio_second``, or tokens at the
model's token prices. A ``text``/``srt``/``vtt`` answer reports nothing, so it is billed
relay's estimate (marked estimated). Usage out of bounds is a 502 billed the estimate.

Speech is priced per input character (``usd_per_mchar``), so its hold is the exact cost;
the audio streams back as the upstream sends it, and is charged in full once the
upstream has started answering (it synthesised, and bills, the whole input), whatever
ends the stream. The usage row's ``units`` is the audio's seconds (rounded up; 0 when
billed by tokens, which have their own columns) or the speech's characters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import ROUND_CEILING, Decimal

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.api.flow import (
    USAGE_INVALID,
    abandon,
    answer_with_metadata,
    close_unstarted_stream,
    dry_run_answer,
    is_dry_run,
    malformed_answer,
    model_for,
    read_answer,
    refuse,
    settle_cost,
)
from relay.api.stream_pass import pass_stream
from relay.api.uploads import UploadForm, read_upload
from relay.errors import InvalidRequest, RelayError, UpstreamError
from relay.http.responses import decode_or_400, error_response, read_body
from relay.http.sse import EventStreamResponse
from relay.identity.auth import ANONYMOUS
from relay.money.audio_estimate import AudioLength, audio_length, quote_speech, quote_transcription
from relay.money.estimate import CostQuote, estimate_prompt_tokens
from relay.money.pricing import audio_cost_micros, token_cost_micros
from relay.state import RelayState, relay_state
from relay.upstream.providers.base import (
    SPEECH_PATH,
    TRANSCRIPTIONS_PATH,
    TRANSLATIONS_PATH,
    with_model,
)
from relay.upstream.routing import OpenedRoute, Route
from relay.upstream.wire_audio import (
    TRANSCRIPT_FORMATS,
    AudioUsage,
    AudioUsageInvalid,
    SpeechRequest,
    decode_speech_request,
    transcription_usage,
)

__all__ = ["speech", "transcriptions", "translations"]

_JSON_FORMATS = ("json", "verbose_json", "diarized_json")


async def transcriptions(request: Request) -> Response:
    return await _transcribe(request, "transcriptions", TRANSCRIPTIONS_PATH)


async def translations(request: Request) -> Response:
    return await _transcribe(request, "translations", TRANSLATIONS_PATH)


def _response_format(form: UploadForm) -> str:
    chosen = form.text.get("response_format") or "json"
    if chosen not in TRANSCRIPT_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}",
            param="response_format",
        )
    return chosen


async def _transcribe(request: Request, endpoint: str, path: str) -> Response:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), endpoint, ANONYMOUS)
    ticket: Ticket | None = None
    try:
        exchange.principal = await state.auth.authenticate(request.headers)
        form = await read_upload(request, state)
        model = model_for(state, exchange, form.required("model"), "transcription")
        audio = form.files("file")
        if len(audio) != 1:
            raise InvalidRequest("the form must carry one audio file as 'file'", param="file")
        response_format = _response_format(form)
        if form.text.get("stream", "false").lower() not in ("false", "0", ""):
            # An SSE transcript would reach relay as a body it cannot bill: refused by name.
            raise InvalidRequest("streamed transcriptions are not supported", param="stream")
        try:
            length = audio_length(audio[0].data, state.config.server.max_audio_seconds)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="file") from None
        prompt = form.text.get("prompt", "").encode()
        quote = quote_transcription(
            model.price,
            length,
            estimate_prompt_tokens(prompt) if prompt else 0,
            multiplier=state.gate.multiplier(exchange.principal),
        )
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)
        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(
                model, path, form.body_for, stream=False, content_type=form.content_type
            )
            exchange.route = opened.route
            answer = await _relay_transcript(
                state, exchange, ticket, opened, (quote, length), response_format
            )
            if state.admitter is not None:  # cluster: the answer waits for its commit
                await state.admitter.committed()
            return answer
    except RelayError as exc:
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


async def _relay_transcript(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    opened: OpenedRoute,
    priced: tuple[CostQuote, AudioLength],
    response_format: str,
) -> Response:
    raw = await read_answer(state, exchange, ticket, opened, "transcript")
    if isinstance(raw, Response):
        return raw
    quote, length = priced
    if response_format not in _JSON_FORMATS:  # plain text reports no usage
        _settle_transcript(state, exchange, ticket, quote, length, None)
        media_type = opened.response.headers.get("content-type", "text/plain; charset=utf-8")
        return Response(raw, media_type=media_type, headers=exchange.headers())
    try:
        usage = transcription_usage(raw)
    except AudioUsageInvalid:
        exchange.status, exchange.error_code = 502, USAGE_INVALID
        _settle_transcript(state, exchange, ticket, quote, length, None)
        error = UpstreamError("upstream reported audio usage out of range")
        return error_response(error, exchange.headers())
    except msgspec.DecodeError:  # not the JSON it must be: never passed on as a billed 200
        return malformed_answer(state, exchange, ticket, "transcript")
    _settle_transcript(state, exchange, ticket, quote, length, usage)
    return answer_with_metadata(raw, exchange)


def _whole_seconds(seconds: Decimal) -> int:
    return int(seconds.to_integral_value(ROUND_CEILING))


def _settle_transcript(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    quote: CostQuote,
    length: AudioLength,
    usage: AudioUsage | None,
) -> None:
    """Bill what the upstream reported; relay's estimate when it reported nothing usable."""
    assert exchange.model is not None
    price = exchange.model.price
    multiplier = state.gate.multiplier(exchange.principal)
    tokens = 0
    per_second = price.usd_per_audio_second is not None
    # Tokens bill only a model with token prices: a per-second model's reported tokens
    # would otherwise make its audio free.
    token_priced = bool(price.input_usd_per_mtok or price.output_usd_per_mtok)
    if usage is not None and usage.by_tokens and (token_priced or not per_second):
        exchange.prompt_tokens, exchange.completion_tokens = usage.input_tokens, usage.output_tokens
        tokens = usage.input_tokens + usage.output_tokens
        cost = token_cost_micros(
            price,
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            multiplier=multiplier,
        )
    elif usage is not None and usage.seconds is not None and per_second:
        cost = audio_cost_micros(price, seconds=usage.seconds, multiplier=multiplier)
        exchange.units = _whole_seconds(usage.seconds)
    elif length.exact and per_second:  # the WAV header's duration: exact, not an estimate
        cost = audio_cost_micros(price, seconds=length.estimate, multiplier=multiplier)
        exchange.units = _whole_seconds(length.estimate)
    else:
        cost = quote.estimate_micros
        exchange.units = _whole_seconds(length.estimate)
        exchange.usage_estimated = True
    settle_cost(state, exchange, ticket, cost, tokens)


# ------------------------------------------------------------------------------ speech


class _PassAudio:
    """``pass_stream``'s tap for a binary body: every byte goes on as it came."""

    done = False

    def feed(self, chunk: bytes) -> bytes:
        return chunk


async def speech(request: Request) -> Response | EventStreamResponse:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), "speech", ANONYMOUS)
    ticket: Ticket | None = None
    try:
        exchange.principal = await state.auth.authenticate(request.headers)
        body = await read_body(request, state.config.server.max_body_bytes)
        spoken: SpeechRequest = decode_or_400(decode_speech_request, body)
        model = model_for(state, exchange, spoken.model, "speech")
        try:
            quote = quote_speech(
                model.price,
                len(spoken.input),
                multiplier=state.gate.multiplier(exchange.principal),
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="model") from None
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)
        exchange.stream = True
        exchange.units = len(spoken.input)

        def body_for(route: Route) -> bytes:
            return with_model(body, spoken.model, route.upstream_model)

        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # handed to the stream below, or released on any way out
            opened = await state.router.open_route(model, SPEECH_PATH, body_for, stream=True)
            exchange.route = opened.route
            media_type = opened.response.headers.get("content-type", "audio/mpeg")
            if not media_type.isascii() or not media_type.isprintable():
                media_type = "application/octet-stream"
            owned = ticket.hand_over()

            def settle() -> None:
                if not owned.finished:
                    settle_cost(state, exchange, owned, quote.estimate_micros, 0)

            stream = _speech_stream(state, exchange, opened, settle)
            headers = {**exchange.id_headers(), "x-relay-cost-micros": str(quote.estimate_micros)}
            return EventStreamResponse(
                stream,
                headers,
                on_close=close_unstarted_stream(state, exchange, owned, opened),
                media_type=media_type,
            )
    except RelayError as exc:
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


def _speech_stream(
    state: RelayState, exchange: Exchange, opened: OpenedRoute, settle: Callable[[], None]
) -> AsyncIterator[bytes]:
    # The audio has no closing events: an error after the head can only cut it short.
    return pass_stream(state, exchange, opened, _PassAudio(), settle, lambda failure: b"")
