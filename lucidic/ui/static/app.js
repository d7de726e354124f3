// Lucidic web UI: the little that needs a script. Pages are rendered by the
// server and updated by htmx; this file localises times, makes the
// session tree a keyboard-usable tree (collapse, expand, select) whose state
// survives the live updates that replace its rows, and holds updates back
// while a mouse button is down.
(function () {
  "use strict";

  // -- times in the reader's own zone ------------------------------------------------
  var timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit"
  });

  function localiseTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      if (el.dataset.localised) continue;
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      el.title = el.textContent;  // the UTC text stays as the tooltip
      el.textContent = timeFormat.format(when);
      el.dataset.localised = "1";
    }
  }

  // -- the session tree ---------------------------------------------------------------
  var collapsed = new Set();
  var selectedKey = null;

  function tree() { return document.getElementById("tree"); }
  function rows() {
    var t = tree();
    return t ? Array.prototype.slice.call(t.querySelectorAll(".node")) : [];
  }
  function depth(row) { return parseInt(row.dataset.depth || "0", 10); }
  function visibleRows() { return rows().filter(function (r) { return !r.hidden; }); }

  function applyTreeState() {
    var all = rows();
    var cut = Infinity;
    var focusable = null;
    all.forEach(function (row) {
      var d = depth(row);
      if (row.hasAttribute("aria-expanded")) {
        row.setAttribute("aria-expanded", collapsed.has(row.dataset.key) ? "false" : "true");
      }
      if (d <= cut) cut = Infinity;
      row.hidden = d > cut;
      if (!row.hidden && row.getAttribute("aria-expanded") === "false") cut = d;
      var selected = row.dataset.key === selectedKey;
      row.setAttribute("aria-selected", selected ? "true" : "false");
      if (selected && !row.hidden) focusable = row;
      row.tabIndex = -1;
    });
    if (!focusable) focusable = all.filter(function (r) { return !r.hidden; })[0];
    if (focusable) focusable.tabIndex = 0;
  }

  function focusRow(row) {
    if (!row) return;
    rows().forEach(function (r) { r.tabIndex = -1; });
    row.tabIndex = 0;
    row.focus();
  }

  function setCollapsed(row, value) {
    if (!row || !row.hasAttribute("aria-expanded")) return;
    if (value) collapsed.add(row.dataset.key); else collapsed.delete(row.dataset.key);
    applyTreeState();
  }

  function select(row) {
    if (!row) return;
    selectedKey = row.dataset.key;
    applyTreeState();
    var link = row.querySelector("a.label");
    if (link && window.htmx) {
      window.htmx.ajax("GET", link.getAttribute("href"), { target: "#detail", swap: "innerHTML" });
    } else if (link) {
      window.location.href = link.getAttribute("href");
    }
  }

  function parentOf(row) {
    var d = depth(row);
    var all = rows();
    for (var i = all.indexOf(row) - 1; i >= 0; i--) {
      if (depth(all[i]) < d) return all[i];
    }
    return null;
  }

  function onTreeKey(event) {
    var row = event.target.closest && event.target.closest(".node");
    if (!row) return;
    var shown = visibleRows();
    var at = shown.indexOf(row);
    var expanded = row.getAttribute("aria-expanded");
    switch (event.key) {
      case "ArrowDown": focusRow(shown[at + 1]); break;
      case "ArrowUp": focusRow(shown[at - 1]); break;
      case "Home": focusRow(shown[0]); break;
      case "End": focusRow(shown[shown.length - 1]); break;
      case "ArrowRight":
        if (expanded === "false") setCollapsed(row, false);
        else if (expanded === "true") focusRow(shown[at + 1]);
        break;
      case "ArrowLeft":
        if (expanded === "true") setCollapsed(row, true);
        else focusRow(parentOf(row));
        break;
      case "Enter": case " ": select(row); break;
      default: return;
    }
    event.preventDefault();
  }

  function onTreeClick(event) {
    var row = event.target.closest && event.target.closest(".node");
    if (!row) return;
    // The row's link is for readers without script: here the tree loads the
    // details itself, once.
    event.preventDefault();
    event.stopPropagation();
    if (event.target.closest(".twisty")) {
      setCollapsed(row, row.getAttribute("aria-expanded") === "true");
      focusRow(row);
      return;
    }
    focusRow(row);
    select(row);
  }

  function onTreeAction(event) {
    var button = event.target.closest && event.target.closest("[data-tree-action]");
    if (!button) return;
    var collapse = button.dataset.treeAction === "collapse";
    rows().forEach(function (row) {
      if (!row.hasAttribute("aria-expanded")) return;
      if (collapse) collapsed.add(row.dataset.key); else collapsed.delete(row.dataset.key);
    });
    applyTreeState();
  }

  // -- updates wait for a held button ----------------------------------------------
  // A poll's answer replaces the list or the tree; so does the search's, 350 ms
  // after the last key. Swapped in between a mouse-down and its mouse-up, it
  // takes the element from under the click, which is lost. So while a button
  // that clicks is held, a poll's answer is dropped (the page keeps its
  // version, and the next poll brings the change), and the search's or a
  // filter's is dropped and asked for again once the button is let go, after
  // the click has landed (its event is the element's data-ask-again).
  var buttonHeld = false;
  var askAgain = null;

  function letGo() {
    buttonHeld = false;
    var elt = askAgain;
    askAgain = null;
    if (elt && window.htmx) {
      setTimeout(function () { window.htmx.trigger(elt, elt.dataset.askAgain); }, 0);
    }
  }

  document.addEventListener("pointerdown", function (event) {
    // The primary button clicks and the middle one opens a link; the right
    // one opens a menu, whose release the page may never be told of.
    if (event.button === 0 || event.button === 1) buttonHeld = true;
  }, true);
  document.addEventListener("pointerup", letGo, true);
  document.addEventListener("pointercancel", letGo, true);
  document.addEventListener("contextmenu", letGo, true);  // a long press that opened a menu
  document.addEventListener("pointermove", function (event) {
    if (!event.buttons) letGo();  // let go outside the window
  }, true);
  window.addEventListener("blur", letGo);

  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!buttonHeld) return;
    var asker = event.detail.requestConfig && event.detail.requestConfig.elt;
    var target = event.detail.elt;  // what the answer would replace
    if (asker && asker.dataset && asker.dataset.askAgain) {
      event.detail.shouldSwap = false;
      askAgain = asker;
    } else if (target && target.hasAttribute && target.hasAttribute("data-live")) {
      event.detail.shouldSwap = false;
    }
  });

  // -- wiring ------------------------------------------------------------------------
  var focusedKey = null;

  document.addEventListener("DOMContentLoaded", function () {
    localiseTimes(document);
    var t = tree();
    if (t) {
      // Links inside rows are not tab stops: the tree is one, moved with arrows.
      t.addEventListener("keydown", onTreeKey);
      t.addEventListener("click", onTreeClick, true);
      applyTreeState();
    }
    document.addEventListener("click", onTreeAction);
  });

  document.addEventListener("htmx:configRequest", function (event) {
    // The live poll of a session asks for as many tree rows as are loaded.
    if (event.detail.elt && event.detail.elt.id === "session-live") {
      event.detail.parameters.loaded = rows().length;
    }
  });

  document.addEventListener("htmx:beforeSwap", function () {
    var active = document.activeElement;
    var row = active && active.closest && active.closest(".node");
    focusedKey = row ? row.dataset.key : null;
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    localiseTimes(event.target && event.target.querySelectorAll ? event.target : document);
    localiseTimes(document);
    if (tree()) {
      applyTreeState();
      if (focusedKey) {
        var again = rows().filter(function (r) { return r.dataset.key === focusedKey; })[0];
        if (again && document.activeElement === document.body) focusRow(again);
      }
    }
  });
})();
