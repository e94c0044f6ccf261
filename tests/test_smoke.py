from tests.support import Api


def test_create_then_increase(api: Api) -> None:
    api.create("g1")
    assert api.update("g1", {"a": 5}, "Increase")["GroupCounter"] == [{"Key": "a", "Value": 5}]
    assert api.counters("g1") == {"a": 5}
