import lucidic as lai

session_id = lai.init(session_name="Trip planner")

@lai.step(action="Plan the trip")
def plan(city: str) -> list[str]:
    lai.create_event(description="looked up the weather", result="sunny")
    return ["museum", "park"]

plan("Oslo")
lai.end_session(is_successful=True)
print(f"Recorded session {session_id}; see it with: lucidic sessions show {session_id}")
