import lucidic as lai


def test_step_and_event_reach_the_embedded_store(store):
    sid = lai.init(session_name="smoke")

    @lai.step(action="work")
    def work():
        lai.create_event(description="inside")
        return 42

    assert work() == 42
    lai.end_session(is_successful=True)
    assert lai.flush()
    tree = store.session_tree(sid)
    assert tree["is_finished"] and tree["is_successful"]
    (step,) = tree["steps"]
    assert step["action"] == "work" and step["is_finished"]
    assert [e["description"] for e in step["events"]] == ["inside"]
