"""``verify``: read every tile of an output through its index; exit 1 listing each defect."""
from __future__ import annotations

import json

import click

from cacheorch.cli import App

__all__ = ["COMMANDS"]


@click.command("verify")
@click.argument("output", type=click.Path())
@click.option("--job", "job_id", type=int, help="Also compare the tiles found per level with the "
              "counts the catalog recorded for this job.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_obj
def verify_command(app: App, output: str, job_id: int | None, as_json: bool) -> None:
    """Check OUTPUT (compact V2/V1 folder, .tpkx, .tpk, exploded, MBTiles, GeoPackage).

    Reads every tile through the index and checks bundle headers, index entries, length
    prefixes, image magic, levels against the scheme and package compression. Prints one line
    per defect (LEVEL/bundle: what) and exits 1 when there is any, 0 when the output is clean.
    """
    from cacheorch.verify import DefectsFound, compare_with_job, verify_output

    from cacheorch.cli.maps import verify_map_folder
    if job_id is None and verify_map_folder(app, output, as_json):  # a map folder: every output
        return

    job = None
    if job_id is not None:  # a wrong job id is bad input: say so before reading a large output
        with app.open_catalog() as catalog:
            job = catalog.get_job(job_id)
    report = verify_output(output)
    if job is not None:
        compare_with_job(report, job)
    if as_json:
        click.echo(json.dumps(report.to_json() | ({"job_id": job_id} if job_id is not None else {}),
                              indent=2))
    else:
        for defect in report.defects:
            click.echo(str(defect))
        if report.ok:
            click.echo(report.summary())
    if not report.ok:
        raise DefectsFound(report.summary())


COMMANDS = [verify_command]
