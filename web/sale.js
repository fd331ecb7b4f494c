// sale page
