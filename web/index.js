// index page
