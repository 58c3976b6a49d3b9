// Opens the <details> a marker (or a #leak-N link) points to: fragment navigation alone
// scrolls to a closed <details> without opening it. data-js shows the buttons, which need
// the script, and tells a browser test the script ran.
(function () {
  document.documentElement.setAttribute("data-js", "ready");
  function reveal(hash) {
    var el = hash && document.getElementById(decodeURIComponent(hash.slice(1)));
    if (el && el.tagName === "DETAILS") { el.open = true; el.scrollIntoView({block: "start"}); }
  }
  document.querySelectorAll("a.leak-marker").forEach(function (a) {
    a.addEventListener("click", function () { reveal(a.getAttribute("href")); });
  });
  window.addEventListener("hashchange", function () { reveal(location.hash); });
  reveal(location.hash);
  function all(state) {
    document.querySelectorAll("details.leak").forEach(function (d) { d.open = state; });
  }
  var expand = document.getElementById("expand-all");
  var collapse = document.getElementById("collapse-all");
  if (expand) { expand.addEventListener("click", function () { all(true); }); }
  if (collapse) { collapse.addEventListener("click", function () { all(false); }); }
})();
