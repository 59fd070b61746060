"""The one job every run of the project's assets goes through: the UI, the sensor, the
schedule and the headless build all launch it, with the assets and partitions they chose."""

from dagster import AssetSelection, define_asset_job

ASSETS_JOB = "build_assets"


def assets_job():  # Dagster exports no name for the type define_asset_job returns
    return define_asset_job(
        ASSETS_JOB,
        selection=AssetSelection.all(),
        description="Any selection of the assets; the headless build, the sensor and the "
        "schedule launch it with the stale partitions.",
    )
