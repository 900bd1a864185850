"""The servers the workflow tests rely on start from the installed binaries (no download)."""


async def test_time_skipping_server_starts(ts_env):
    assert ts_env.supports_time_skipping


async def test_dev_server_starts(dev_env):
    assert not dev_env.supports_time_skipping
