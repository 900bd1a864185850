from activities.changes import ChangeSetRequest, SwitchChange


async def test_apply_writes_value_and_audit(store):
    res = await store.apply(ChangeSetRequest(change_id="c1", actor="rita", reason="r",
                                             changes=[SwitchChange(switch="hedge_max_leverage", value=2.0)]))
    assert res.changes[0].old == 3.0 and res.changes[0].new == 2.0
    assert (await store.get("hedge_max_leverage")).value == 2.0
    assert (await store.audit(limit=1))[0].change_id == "c1"
