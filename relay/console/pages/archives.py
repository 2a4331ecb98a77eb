"""The owner's monthly usage archives: listed, and downloaded as the files relay wrote.

Usage rows older than the retention period live in gzip JSON Lines files (one per account
and month, ``relay.usage.retention``), kept two years. An owner downloads their own
account's files here; the file name is looked up in the ``archives`` table for this
account, never taken as a path from the request. In cluster mode the records and bytes are
PostgreSQL's (``archives`` and ``archive_chunks``, ``relay.cluster.pg_retention``): the
same page and the same file from every instance, streamed a chunk at a time.
"""

from __future__ import annotations

from starlette.responses import FileResponse, Response, StreamingResponse

from relay.console.web import ConsoleError, Ctx, page
from relay.identity.roles import Permission
from relay.usage.retention import archive_dir_for

__all__ = ["archives_page", "download_archive"]


@page("account", Permission.MANAGE_ACCOUNT)
async def archives_page(ctx: Ctx) -> Response:
    assert ctx.account is not None
    rows = await ctx.services.reader.fetchall(
        "SELECT name, month, rows, bytes, sha256 FROM archives "
        "WHERE kind = 'usage' AND account_id = ? ORDER BY month DESC, name",
        (ctx.account.id,),
    )
    return ctx.render("archives.html", archives=[dict(row) for row in rows])


@page("account", Permission.MANAGE_ACCOUNT)
async def download_archive(ctx: Ctx) -> Response:
    assert ctx.account is not None
    name = ctx.request.path_params["name"]
    row = await ctx.services.reader.fetchone(
        "SELECT name, sha256, rows FROM archives "
        "WHERE kind = 'usage' AND account_id = ? AND name = ?",
        (ctx.account.id, name),
    )
    records = ctx.services.records
    if row is None or name not in await records.usage_archive_names(ctx.account.id):
        raise ConsoleError(404, "There is no such archive for this account.")
    await ctx.state.store.record_action(
        actor=ctx.actor, action="archive.download", target=ctx.account.id, detail={"name": name}
    )
    headers = {"x-relay-sha256": str(row["sha256"]), "x-relay-rows": str(row["rows"])}
    if ctx.state.cluster is None:
        path = archive_dir_for(ctx.state.config.database_path) / name
        return FileResponse(path, media_type="application/gzip", filename=name, headers=headers)
    headers["content-disposition"] = f'attachment; filename="{name}"'
    return StreamingResponse(
        records.usage_archive_chunks(name), media_type="application/gzip", headers=headers
    )
