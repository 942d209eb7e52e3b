window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// Typeset again whenever mkdocs-material swaps the page content (instant navigation).
// tex-svg.js is the SVG output, whose cache call is clearFontCache (clearCache is CHTML's).
document$.subscribe(() => {
  MathJax.startup.promise.then(() => {
    MathJax.startup.output.clearFontCache()
    MathJax.typesetClear()
    MathJax.texReset()
    return MathJax.typesetPromise()
  })
})
